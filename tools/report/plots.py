"""The report's plots: accuracy per round and per MB, the phase table as stacked bars, and
the projected round against link bandwidth (matplotlib's object API, no global state)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from fedvit.keys import KINDS, TABLE_ROWS
from tools.report.linkmodel import SWEEP_MBPS, LinkModel, fmt_rate, sweep_mbps
from tools.report.load import Run

PLOTS = {
    "accuracy": "accuracy.png",
    "accuracy-mb": "accuracy_vs_mb.png",
    "phases": "phases.png",
    "bandwidth": "bandwidth.png",
    "time-to-accuracy": "accuracy_vs_time.png",
}


def colors(n: int) -> list:
    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_accuracy(runs: Sequence[Run], path: Path, x_key: str | None = None) -> None:
    """Central accuracy per round (``x_key`` None) or against ``rounds.json[x_key]``,
    written as a PNG to ``path``."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for run, color in zip(runs, colors(len(runs)), strict=True):
        xs = [r["round"] if x_key is None else r[x_key] for r in run.rounds]
        ax.plot(xs, [r["central-accuracy"] for r in run.rounds], "o-", color=color,
                label=run.label)
    if x_key is None:
        ax.set_xlabel("round")
        ax.xaxis.get_major_locator().set_params(integer=True)
    else:
        ax.set_xscale("log")
        ax.set_xlabel("cumulative MB exchanged (whole messages, both directions)")
    ax.set_ylabel("central accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend()
    save(fig, path)


def plot_phases(runs: Sequence[Run], path: Path) -> None:
    """Stacked per-phase seconds of a steady round: measured, projected and as a
    deployment, per run (runs without a phase table left out)."""
    fig = Figure(figsize=(max(6.0, 2.2 * len(runs) + 3), 5))
    ax = fig.add_subplot()
    cmap = colormaps["tab20"]
    tabled = [r for r in runs if r.phase_table]
    xs, names = [], []
    for i, run in enumerate(tabled):
        for j, kind in enumerate(KINDS):
            xs.append(4 * i + j)
            names.append(f"{run.label}\n{kind}")
    for k, row in enumerate(TABLE_ROWS):
        heights = [r.phase_table[kind][row] for r in tabled for kind in KINDS]
        bottoms = [sum(r.phase_table[kind][p] for p in TABLE_ROWS[:k])
                   for r in tabled for kind in KINDS]
        ax.bar(xs, heights, bottom=bottoms, color=cmap(k), label=row, width=0.8)
    ax.set_xticks(xs, names, fontsize=8)
    ax.set_ylabel("seconds per steady round (mean)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, axis="y", alpha=0.3)
    save(fig, path)


def plot_bandwidth(runs: Sequence[Run], models: Sequence[LinkModel | None],
                   cross: Sequence[tuple[str, str, float]], path: Path) -> None:
    """Projected round against link bandwidth, simulation and deployment view per run;
    dashed: half-communication bandwidths; dotted: crossovers ``(label, label, Mbit/s)``."""
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot()
    mbps = sweep_mbps()
    lo, hi = SWEEP_MBPS
    for run, model, color in zip(runs, models, colors(len(runs)), strict=True):
        if model is None:
            continue
        ax.plot(mbps, [model.round_s(b) for b in mbps], "-", color=color,
                label=f"{run.label} (simulation)")
        ax.plot(mbps, [model.deployment_round_s(b) for b in mbps], "-.", color=color,
                label=f"{run.label} (deployment)")
        links, own = run.links, run.summary.get("projected-round-s")
        if own is not None and links["profile"] == "uniform" \
                and links["down-mbps"] == links["up-mbps"]:
            ax.plot([links["down-mbps"]], [own], "o", color=color)
        half = model.half_comm_mbps()
        if lo <= half <= hi:
            ax.axvline(half, color=color, linestyle="--", linewidth=1,
                       label=f"{run.label}: comm = ½ round at {fmt_rate(half)}")
    for a, b, x in cross:
        if lo <= x <= hi:
            ax.axvline(x, color="black", linestyle=":", linewidth=1,
                       label=f"{a} = {b} at {fmt_rate(x)}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_xlabel("link bandwidth, both directions (Mbit/s)")
    ax.set_ylabel("projected round (s)")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    save(fig, path)
