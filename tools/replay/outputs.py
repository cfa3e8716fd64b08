"""A replay's files: ``replay.md`` (the ranking), ``replay.csv`` and ``replay.json`` (each
run's per-round curve) and ``replay.png`` (accuracy against projected deployment time);
and the Markdown section ``fedvit-report`` shares."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from fedvit.schema import dataclass_row
from tools.replay.engine import RoundReplay
from tools.replay.rank import Comparison
from tools.report.markdown import md_table
from tools.report.plots import colors, save

FILES = {"md": "replay.md", "csv": "replay.csv", "json": "replay.json", "png": "replay.png"}
RUN_COLUMNS = ("run", "folder")  # before each RoundReplay's columns in replay.csv

SECTION_TEXT = (
    "Each run's recorded rounds replayed back to back on the links (`tools.replay`: per "
    "round and phase the critical path, the node whose download + measured work + upload "
    "takes longest, plus the server's rows, as the run's own projection does; each message "
    "priced at the time it is sent). *Deployment* adds a deployment's fixed costs per "
    "message (pickup, start-up, return); *simulation* leaves them out. Time to target: the "
    "end of the first round whose central accuracy reaches it.")


def _opt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def section(comp: Comparison, heading: str, plot: str | None) -> str:
    """The ranking as Markdown: table, winner, swap and (if ``plot``) the plot.

    Args:
        comp: the comparison (``tools.replay.rank.compare``).
        heading: the section's heading line (with its ``#``).
        plot: the PNG's file name next to the Markdown, or None.
    """
    if comp.target is None:
        return "\n\n".join([heading, comp.winner])
    how = ("the given target" if comp.target_given
           else "the highest accuracy every run reaches")
    rows = [[str(i), x.label, x.reached_text(),
             _opt(x.simulation_s, ".1f") + (" s" if x.simulation_s is not None else ""),
             _opt(x.round, "d"), str(len(x.replay.rounds)),
             _opt(x.replay.best_accuracy, ".4f"),
             f"{x.replay.rounds[-1].cumulative_deployment_s:.1f} s",
             f"`{x.replay.run.path.name}`"]
            for i, x in enumerate(comp.ranked, 1)]
    table = md_table(["rank", "run", f"deployment: time to {comp.target:.4f}",
                      f"simulation: time to {comp.target:.4f}", "round reaching it", "rounds",
                      "best accuracy", "deployment: all rounds", "folder"], rows)
    parts = [heading, SECTION_TEXT,
             f"Target: accuracy **{comp.target:.4f}** ({how}).", table, comp.winner]
    if comp.swap is not None:
        parts.append(comp.swap.text())
    if plot:
        parts.append(f"![Accuracy against projected time]({plot})\n\n*Central accuracy "
                     "against projected time (solid: deployment, dotted: simulation); "
                     "dashed: the target.*")
    return "\n\n".join(parts)


def curve_rows(comp: Comparison) -> list[dict]:
    """Every run's rounds as rows: ``run``, ``folder``, then ``RoundReplay``'s columns."""
    return [{"run": r.run.label, "folder": str(r.run.path), **dataclass_row(x)}
            for r in comp.replays for x in r.rounds]


def write_curves(comp: Comparison, out: Path, links: str, devices: str | None) -> None:
    """``replay.csv`` (one row per run and round) and ``replay.json`` (the spec, target,
    ranking and curves)."""
    rows = curve_rows(comp)
    columns = [*RUN_COLUMNS, *(dataclass_row(RoundReplay(0, 0, 0, 0, 0, None)))]
    with (out / FILES["csv"]).open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    doc = {
        "links": links, "devices": devices, "target": comp.target,
        "target-given": comp.target_given, "winner": comp.winner,
        "swap": None if comp.swap is None else {
            "runs": list(comp.swap.labels), "latency-ms": comp.swap.latency_ms,
            "mbps": comp.swap.mbps, "sooner-low": comp.swap.sooner_low,
            "sooner-high": comp.swap.sooner_high},
        "ranking": [{"run": x.label, "folder": str(x.replay.run.path),
                     "deployment-s": x.deployment_s, "simulation-s": x.simulation_s,
                     "round": x.round} for x in comp.ranked],
        "runs": [{"run": r.run.label, "folder": str(r.run.path),
                  "rounds": [dataclass_row(x) for x in r.rounds]} for r in comp.replays],
    }
    (out / FILES["json"]).write_text(json.dumps(doc, indent=2) + "\n")


def plot(comp: Comparison, path: Path) -> None:
    """Accuracy against projected time, one colour per run: solid the deployment view,
    dotted the simulation view; a dashed line at the target."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for r, color in zip(comp.replays, colors(len(comp.replays)), strict=True):
        acc = [x.accuracy for x in r.rounds]
        ax.plot([x.cumulative_deployment_s for x in r.rounds], acc, "o-", color=color,
                label=f"{r.run.label} (deployment)")
        ax.plot([x.cumulative_simulation_s for x in r.rounds], acc, ".:", color=color,
                label=f"{r.run.label} (simulation)")
    if comp.target is not None:
        ax.axhline(comp.target, color="black", linestyle="--", linewidth=1,
                   label=f"target {comp.target:.4f}")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(  # 2, 3, 5 of each decade: no overlaps
        lambda v, _: f"{v:g}" if f"{v:e}"[0] in "235" else ""))
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("projected time since the first round's start (s)")
    ax.set_ylabel("central accuracy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, path)


def write_all(comp: Comparison, out: Path, links: str, devices: str | None) -> Path:
    """Write every file of ``FILES`` into ``out`` (created); return ``replay.md``'s path."""
    out.mkdir(parents=True, exist_ok=True)
    write_curves(comp, out, links, devices)
    plot(comp, out / FILES["png"])
    intro = ("Generated by `fedvit-replay` from " + ", ".join(
        f"`{r.run.path}`" for r in comp.replays) + f" with `--links {links}`"
        + (f" `--devices {devices}`" if devices else "") + ". Curves: "
        f"`{FILES['csv']}`, `{FILES['json']}`.")
    text = section(comp, "# Time to accuracy on your links", FILES["png"])
    head, _, rest = text.partition("\n\n")
    path = out / FILES["md"]
    path.write_text("\n\n".join([head, intro, rest]) + "\n")
    return path
