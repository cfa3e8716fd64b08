"""``fedvit-report RUN_DIR [RUN_DIR ...] [--out DIR]``: compare finished runs.

Reads only what the results writer left in each run folder (``config.json``,
``summary.json``, ``rounds.json``, ``books.json``, ``phases.json``), never recomputes
training, and writes ``report.md`` with four PNG plots next to it:

* accuracy per round and against cumulative MB exchanged (``rounds.json``);
* where a steady round's time goes, measured and projected (``summary.json`` phase table);
* the projected round time against link bandwidth (1 Mbit/s to 10 Gbit/s, both directions),
  as a simulation would see it and as a deployment would, with its fixed costs per message;
* in the link lab, the bytes the kernel counted on each link against the books
  (``summary.json`` "wire").

The bandwidth sweep is the projection of ``server_app.timeline`` with the mean steady round:
``round(B) = fixed + messages x latency + 8 x (down + up bytes) / B``, where *fixed* is the
projected phase table without its transfer row (the slowest node's compute, configure,
aggregation, central evaluation; for the deployment curve also pickup, start-up and
return) and *down*/*up* are the largest message any node received or sent in each phase
of a round (``books.json``), summed over phases and averaged over the steady rounds. At
the run's own links it gives back the run's projected round.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from fedvit.links import (
    PULL_OBJECT_BYTES,
    PUSH_OBJECT_BYTES,
    object_seconds,
    wire_bytes,
)
from server_app.timeline import KINDS, TABLE_ROWS, format_table

MB = 1e6
SWEEP_MBPS = (1.0, 10_000.0)  # 1 Mbit/s .. 10 Gbit/s
SWEEP_POINTS = 60
COMPARE_AT_MBPS = (10.0, 1000.0)
LABEL_IGNORED_KEYS = ("outputs-dir", "run-name", "resume-from")  # bookkeeping, not factors
LABEL_MAX_KEYS = 3
PLOTS = {
    "accuracy": "accuracy.png",
    "accuracy-mb": "accuracy_vs_mb.png",
    "phases": "phases.png",
    "bandwidth": "bandwidth.png",
}


class ReportError(Exception):
    """A run folder cannot be reported (missing or unreadable files)."""


@dataclass(frozen=True)
class Run:
    """One run folder's files, as the results writer left them."""

    path: Path
    config: dict
    summary: dict
    rounds: list[dict]
    books: list[dict]
    phases: list[dict]  # empty for runs that predate the timing analysis
    label: str = ""

    @property
    def phase_table(self) -> dict[str, dict[str, float]] | None:
        """``summary.json`` "phase-table" (mean of steady rounds), if the run has one."""
        return self.summary.get("phase-table")

    @property
    def links(self) -> dict | None:
        """``summary.json`` "links" (the configured network model), if the run has them."""
        return self.summary.get("links")

    @property
    def total_bytes(self) -> int:
        """Whole messages, both directions, all rounds."""
        b = self.summary["bytes"]
        return b["down-msg"] + b["up-msg"]


@dataclass(frozen=True)
class LinkModel:
    """A run's mean steady round as a function of link bandwidth (same for every node)."""

    fixed_s: float  # projected phase table without transfer
    messages: float  # messages on the critical path per round (2 per phase)
    latency_s: float
    down_bytes: float  # slowest node's down bytes on the wire per round, summed over phases
    up_bytes: float

    @property
    def constant_s(self) -> float:
        """The part of the round no bandwidth can shorten: fixed compute plus latencies."""
        return self.fixed_s + self.latencies_s

    @property
    def bits(self) -> float:
        """Bits on the critical path per round."""
        return 8 * (self.down_bytes + self.up_bytes)

    def comm_s(self, down_mbps: float, up_mbps: float | None = None) -> float:
        """Communication seconds per round at these link speeds."""
        up_mbps = down_mbps if up_mbps is None else up_mbps
        objects, ms = round(self.objects / 2), 1e3 * self.latency_s
        return (self.messages * self.latency_s
                + object_seconds(self.down_bytes, objects, down_mbps, ms)
                + object_seconds(self.up_bytes, round(self.objects) - objects, up_mbps, ms))

    deployment_fixed_s: float = 0.0  # the deployment table without transfer
    objects: float = 0.0  # objects of those messages (one HTTP call each)

    @property
    def latencies_s(self) -> float:
        """The bandwidth-free part of communication: one latency per message, and what
        the per-object calls cost on an infinitely fast link."""
        return (self.messages * self.latency_s
                + object_seconds(0.0, round(self.objects), math.inf, 1e3 * self.latency_s))

    def round_s(self, down_mbps: float, up_mbps: float | None = None) -> float:
        """Projected round seconds at these link speeds."""
        return self.fixed_s + self.comm_s(down_mbps, up_mbps)

    def deployment_round_s(self, down_mbps: float, up_mbps: float | None = None) -> float:
        """The same round as a deployment: plus its fixed costs per message."""
        return self.deployment_fixed_s + self.comm_s(down_mbps, up_mbps)

    def half_comm_mbps(self) -> float:
        """Bandwidth below which communication is more than half the round.

        comm(B) = fixed  <=>  n·latency + bits / B = fixed  <=>  B = bits / (fixed - n·latency);
        ``inf`` when the latencies alone exceed the fixed part, 0 when nothing is sent.
        """
        room = self.fixed_s - self.latencies_s
        if self.bits == 0:
            return 0.0
        return math.inf if room <= 0 else self.bits / room / MB


# ---------------------------------------------------------------------------- loading


def _read_json(path: Path, required: bool = True) -> Any:
    if not path.exists():
        if required:
            raise ReportError(f"{path} is missing" + (
                " (summary.json is written when a run finishes)"
                if path.name == "summary.json" else ""))
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"{path} cannot be read: {e}") from e


def load_run(path: Path) -> Run:
    """One run folder; a missing ``phases.json`` (older runs) is an empty list."""
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise ReportError(f"{path} is not a run folder")
    return Run(path, _read_json(path / "config.json"), _read_json(path / "summary.json"),
               _read_json(path / "rounds.json"), _read_json(path / "books.json"),
               _read_json(path / "phases.json", required=False) or [])


def _value(v: object) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _distinct_keys(config: dict, group: Sequence[dict]) -> list[str]:
    """Keys where ``config`` departs from its group: its value is not the most common one
    (when every value is equally common, as with two runs, each run shows the key)."""
    keys = []
    for k in config:
        if k in LABEL_IGNORED_KEYS:
            continue
        counts = Counter(_value(c.get(k)) for c in group)
        if len(counts) > 1 and (counts[_value(config[k])] < max(counts.values())
                                or len(set(counts.values())) == 1):
            keys.append(k)
    return keys


def _stamp(run: Run) -> str:
    """The run folder's name without its ``-<strategy>`` tail."""
    return run.path.name.replace(f"-{run.summary['strategy']}", "", 1)


def run_labels(runs: Sequence[Run]) -> list[str]:
    """The strategy, plus the config keys that set a run apart from runs of its strategy
    (a label shared by two runs gets their folders' time stamps)."""
    labels = []
    for run in runs:
        strategy = run.summary["strategy"]
        group = [r.config for r in runs if r.summary["strategy"] == strategy]
        label = strategy
        if len(group) > 1:
            keys = _distinct_keys(run.config, group)
            parts = [f"{k}={_value(run.config[k])}" for k in keys[:LABEL_MAX_KEYS]]
            if len(keys) > LABEL_MAX_KEYS:
                parts.append(f"+{len(keys) - LABEL_MAX_KEYS}")
            label = " ".join([strategy, *parts])  # no keys: the group's baseline
        labels.append(label)
    return [lb if labels.count(lb) == 1 else f"{lb} {_stamp(r)}"
            for lb, r in zip(labels, runs, strict=True)]


def load_runs(paths: Sequence[Path]) -> list[Run]:
    """Every run, labelled."""
    runs = [load_run(p) for p in paths]
    return [replace(r, label=lb) for r, lb in zip(runs, run_labels(runs), strict=True)]


# ---------------------------------------------------------------------- derived numbers


def steady_rounds(run: Run) -> list[int]:
    """The rounds ``summary.json`` averages: all but the first (or the only one)."""
    rounds = [p["round"] for p in run.phases] or [r["round"] for r in run.rounds]
    return rounds[1:] or rounds


def critical_bytes(books: list[dict], server_round: int) -> tuple[float, float, int, int]:
    """(down bytes, up bytes, messages, objects) of one round's slowest-node path, over
    phases, as they take the wire (``fedvit.links.wire_bytes``: frames and Flower's
    per-object framing).

    Per phase: the largest message any replying node received, and the largest it sent.
    """
    down = up = messages = objects = 0
    for phase in ("train", "evaluate"):
        rows = [b for b in books if b["round"] == server_round and b["phase"] == phase]
        ok = {b["node_id"] for b in rows if b["direction"] == "up" and b["status"] == "ok"}
        if not ok:
            continue
        sent = [b for b in rows if b["direction"] == "down" and b["node_id"] in ok]
        got = [b for b in rows if b["direction"] == "up" and b["node_id"] in ok]
        down += max(wire_bytes(b["message_bytes"], b.get("objects", 0), PULL_OBJECT_BYTES)
                    for b in sent)
        up += max(wire_bytes(b["message_bytes"], b.get("objects", 0), PUSH_OBJECT_BYTES)
                  for b in got)
        objects += max(b.get("objects", 0) for b in sent) + max(b.get("objects", 0)
                                                                for b in got)
        messages += 2
    return down, up, messages, objects


def link_model(run: Run) -> LinkModel | None:
    """The run's bandwidth model, or None for a run without a phase table."""
    table = run.phase_table
    if not table or not run.links:
        return None
    per_round = [critical_bytes(run.books, r) for r in steady_rounds(run)]
    n = max(len(per_round), 1)
    down, up, messages, objects = (sum(x[i] for x in per_round) / n for i in range(4))
    fixed = {kind: sum(s for row, s in table[kind].items() if row != "transfer")
             for kind in ("projected", "deployment") if kind in table}
    return LinkModel(fixed["projected"], messages, run.links["latency-ms"] / 1e3, down, up,
                     fixed.get("deployment", fixed["projected"]), objects)


def crossover_mbps(a: LinkModel, b: LinkModel) -> float | None:
    """Bandwidth where both rounds take equally long, if the curves cross (B > 0).

    C_a + K_a / B = C_b + K_b / B  <=>  B = (K_b - K_a) / (C_a - C_b).
    """
    dc, dk = a.constant_s - b.constant_s, b.bits - a.bits
    if dc == 0 or dk == 0 or (dk > 0) != (dc > 0):
        return None
    return dk / dc / MB


def sweep_mbps() -> np.ndarray:
    """The bandwidths of the sweep, log-spaced."""
    return np.logspace(*np.log10(SWEEP_MBPS), SWEEP_POINTS)


# ----------------------------------------------------------------------------- formats


def fmt_rate(mbps: float) -> str:
    """A bandwidth, in Mbit/s below 1 Gbit/s, else Gbit/s."""
    if math.isinf(mbps):
        return "∞"
    return f"{mbps / 1e3:.3f} Gbit/s" if mbps >= 1e3 else f"{mbps:.3f} Mbit/s"


def _opt(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _links_text(links: dict | None) -> str:
    if not links:
        return "n/a"
    if links["profile"] == "node-config":
        return "per node: " + "; ".join(
            f"{pid}: {_value(n['link-down-mbps'])}/{_value(n['link-up-mbps'])} Mbit/s, "
            f"{_value(n['link-latency-ms'])} ms" for pid, n in links["nodes"].items())
    return (f"{_value(links['down-mbps'])}/{_value(links['up-mbps'])} Mbit/s, "
            f"{_value(links['latency-ms'])} ms, {links['profile']}")


# ------------------------------------------------------------------------------- plots


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_accuracy(runs: Sequence[Run], path: Path, x_key: str | None = None) -> None:
    """Central accuracy per round (``x_key`` None) or against ``rounds.json[x_key]``."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for run, color in zip(runs, _colors(len(runs)), strict=True):
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
    _save(fig, path)


def plot_phases(runs: Sequence[Run], path: Path) -> None:
    """Stacked per-phase seconds of a steady round: measured, projected and as a
    deployment, per run."""
    fig = Figure(figsize=(max(6.0, 2.2 * len(runs) + 3), 5))
    ax = fig.add_subplot()
    from matplotlib import colormaps

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
    _save(fig, path)


def plot_bandwidth(runs: Sequence[Run], models: Sequence[LinkModel | None],
                   cross: list[tuple[str, str, float]], path: Path) -> None:
    """Projected round against link bandwidth; dashed: half-communication bandwidths."""
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot()
    mbps = sweep_mbps()
    lo, hi = SWEEP_MBPS
    for run, model, color in zip(runs, models, _colors(len(runs)), strict=True):
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
    _save(fig, path)


# ---------------------------------------------------------------------------- markdown


def _figure(name: str, caption: str) -> str:
    return f"![{caption}]({PLOTS[name]})\n\n*{caption}*"


def runs_section(runs: Sequence[Run]) -> str:
    """The table of runs."""
    header = ["run", "strategy", "model", "rounds", "final central accuracy", "MB down",
              "MB up", "MB / round", "framing overhead %", "steady round wall s",
              "projected round s", "links", "folder"]
    rows = []
    for r in runs:
        s = r.summary
        b = s["bytes"]
        rows.append([r.label, s["strategy"], s["model-name"], str(s["rounds"]),
                     _opt(s["final-central-accuracy"], ".4f"), f"{b['down-msg'] / MB:.3f}",
                     f"{b['up-msg'] / MB:.3f}",
                     f"{r.total_bytes / MB / s['rounds']:.3f}" if s["rounds"] else "n/a",
                     _opt(s["framing-overhead-percent"]),
                     _opt(s.get("steady-round-wall-s")), _opt(s.get("projected-round-s")),
                     _links_text(r.links), f"`{r.path.name}`"])
    return ("## Runs\n\nMB are whole messages as serialised (10^6 bytes); steady = mean of all "
            "rounds but the first; projected = a steady round on the run's configured links.\n\n"
            + _md_table(header, rows))


def accuracy_section(runs: Sequence[Run]) -> str:
    """Final accuracies, the gap to the best, and the accuracy plots."""
    accs = {r.label: r.summary["final-central-accuracy"] for r in runs}
    best_label = max((lb for lb in accs if accs[lb] is not None), key=accs.get, default=None)
    if best_label is None:
        return "## Accuracy\n\nNo run finished a round."
    best = accs[best_label]
    rows = [[lb, _opt(a, ".4f"), "n/a" if a is None else f"{100 * (best - a):.2f}"]
            for lb, a in accs.items()]
    return "\n\n".join([
        "## Accuracy",
        f"Best final central accuracy: **{best:.4f}** ({best_label}).",
        _md_table(["run", "final central accuracy", "gap to best (points)"], rows),
        _figure("accuracy", "Central accuracy (server test split) after each round."),
        _figure("accuracy-mb", "Central accuracy against cumulative MB exchanged "
                "(log scale): accuracy bought per byte."),
    ])


def reference_run(runs: Sequence[Run]) -> Run:
    """What byte ratios compare with: the first fedavg run, else the first run."""
    return next((r for r in runs if r.summary["strategy"] == "fedavg"), runs[0])


def bytes_section(runs: Sequence[Run]) -> str:
    """Each run's bytes as a share of the reference run's, in total and per round."""
    ref = reference_run(runs)
    ref_round = ref.total_bytes / max(ref.summary["rounds"], 1)
    rows, lines = [], []
    for r in runs:
        per_round = r.total_bytes / max(r.summary["rounds"], 1)
        share, share_round = 100 * r.total_bytes / ref.total_bytes, 100 * per_round / ref_round
        rows.append([r.label, f"{r.total_bytes / MB:.3f}", f"{share:.2f}",
                     f"{per_round / MB:.3f}", f"{share_round:.2f}"])
        if r is not ref:
            lines.append(f"* {r.label} uses **{share_round:.2f} %** of {ref.label}'s bytes per "
                         f"round ({ref_round / per_round:.1f}× fewer); {share:.2f} % in total.")
    return "\n\n".join(["## Bandwidth",
                        _md_table(["run", "total MB", f"% of {ref.label}", "MB / round",
                                   f"% of {ref.label} per round"], rows),
                        "\n".join(lines)]).rstrip()


def phases_section(runs: Sequence[Run]) -> str:
    """``format_table`` with every run side by side, and the stacked-bar plot."""
    tables = {r.label: r.phase_table for r in runs if r.phase_table}
    missing = [r.label for r in runs if not r.phase_table]
    parts = ["## Where a round's time goes",
             "Mean of the steady rounds (all but the first). *Measured*: every second of "
             "the round given to one row (`unexplained`: what no timestamp covers); "
             "*projected*: each phase lasts as long as its slowest node's download + "
             "work + upload on the run's links; *deployment*: the same plus a deployment's "
             "pickup, start-up and return per message."]
    if tables:
        parts += ["```\n" + format_table(tables) + "\n```",
                  _figure("phases", "Seconds per steady round by phase: measured, projected "
                          "on the run's links, and as a deployment, for each run.")]
    if missing:
        parts.append("No phase data (runs before the timing analysis): " + ", ".join(missing))
    return "\n\n".join(parts)


def _comparison(a: Run, ma: LinkModel, b: Run, mb: LinkModel) -> str:
    x = crossover_mbps(ma, mb)
    lo, hi = SWEEP_MBPS
    if x is not None and lo <= x <= hi:
        lean, heavy = (a, b) if ma.bits < mb.bits else (b, a)
        return (f"* {a.label} and {b.label} cross at **{fmt_rate(x)}** "
                f"({ma.round_s(x):.3f} s per round): below it {lean.label} is faster, above it "
                f"{heavy.label}.")
    ends = [ma.round_s(lo) - mb.round_s(lo), ma.round_s(hi) - mb.round_s(hi)]
    if all(d == 0 for d in ends):
        return f"* {a.label} and {b.label} take equally long at every bandwidth."
    fast, slow, mf, ms = (a, b, ma, mb) if ends[0] + ends[1] < 0 else (b, a, mb, ma)
    at = "; ".join(f"{mf.round_s(v):.3f} s against {ms.round_s(v):.3f} s at {fmt_rate(v)} "
                   f"({ms.round_s(v) / mf.round_s(v):.2f}× faster)" for v in COMPARE_AT_MBPS)
    return (f"* The curves of {a.label} and {b.label} do not cross between "
            f"{fmt_rate(lo)} and {fmt_rate(hi)}: {fast.label} is faster everywhere: {at}.")


def _outside(mbps: float) -> str:
    lo, hi = SWEEP_MBPS
    return "" if lo <= mbps <= hi else " (outside the plotted range)"


def links_section(runs: Sequence[Run], models: Sequence[LinkModel | None]) -> str:
    """The bandwidth model per run, half-communication bandwidths, crossovers, the plot."""
    header = ["run", "fixed s", "messages / round", "latency ms", "MB down / round",
              "MB up / round", "comm > ½ round below", "model at run's links s",
              "run's projected round s"]
    rows, halves = [], []
    for r, m in zip(runs, models, strict=True):
        if m is None:
            rows.append([r.label] + ["n/a"] * (len(header) - 1))
            continue
        links = r.links
        at_links = (f"{m.round_s(links['down-mbps'], links['up-mbps']):.3f}"
                    if links["profile"] == "uniform" else "n/a")
        half = m.half_comm_mbps()
        rows.append([r.label, f"{m.fixed_s:.3f}", f"{m.messages:g}", f"{1e3 * m.latency_s:g}",
                     f"{m.down_bytes / MB:.6f}", f"{m.up_bytes / MB:.6f}", fmt_rate(half),
                     at_links, _opt(r.summary.get("projected-round-s"))])
        halves.append(f"* {r.label}: communication is more than half of the projected round "
                      + (f"below **{fmt_rate(half)}**{_outside(half)}." if 0 < half < math.inf else
                         "at every bandwidth (latency alone)." if half else "never."))
    pairs = [_comparison(runs[i], models[i], runs[j], models[j])
             for i in range(len(runs)) for j in range(i + 1, len(runs))
             if models[i] and models[j]]
    hetero = any(r.links and r.links["profile"] != "uniform" for r in runs)
    return "\n\n".join(filter(None, [
        "## Round time against link bandwidth",
        "Projected steady round with every node on the same link of bandwidth B both ways: "
        "round(B) = fixed + messages × latency + the messages' objects moved one call each "
        "(`fedvit.links`: their bytes at B, and per call its handling and a round trip, two "
        "calls in flight). *Fixed* is the projected phase table without transfer (the "
        "deployment curve adds pickup, start-up and return); MB down/up are the slowest "
        "path's bytes per round as they take the wire (the books' message bytes in TCP/IP "
        "frames plus Flower's per-object framing; per phase the largest message received "
        "and sent by any node, summed over phases, mean of steady rounds). Communication "
        "exceeds half the round when its time exceeds *fixed*, in closed form "
        "B* = 8 × bytes / (fixed − per-message and per-call costs): exact where the bytes "
        "set the time, approximate where many small objects' calls do.",
        "Links per node (heterogeneous, or from node config as in a deployment or the link "
        "lab): the sweep puts every node on one link with the nodes' mean latency, so the "
        "run's own projection is not a point of its curve." if hetero else "",
        _md_table(header, rows),
        "\n".join(halves),
        "\n".join(pairs),
        _figure("bandwidth", "Projected round time against link bandwidth (log-log); dot: the "
                "run's own projection on its links; dashed: below it communication is more "
                "than half the round; dotted: crossover."),
    ]))


def wire_section(runs: Sequence[Run]) -> str:
    """Link-lab runs: the kernel's bytes on each link against the books ('' if none)."""
    rows = [[r.label, pid] + [f"{w[f'{d}-{k}']:,}" for d in ("down", "up")
                              for k in ("wire-bytes", "books-bytes")]
            + [_opt(w["down-wire-per-books"]), _opt(w["up-wire-per-books"])]
            for r in runs for pid, w in (r.summary.get("wire") or {}).items()]
    if not rows:
        return ""
    return "\n\n".join([
        "## Wire truth (link lab)",
        "Bytes the kernel counted on each node's veth during the run against the books' "
        "message bytes. The difference is HTTP framing, TCP/IP and Ethernet headers, TCP "
        "acknowledgements, the SuperNode's polls and heartbeats, and the app bundle's "
        "download.",
        _md_table(["run", "partition", "down wire B", "down books B", "up wire B",
                   "up books B", "down wire / books", "up wire / books"], rows)])


def write_markdown(runs: Sequence[Run], models: Sequence[LinkModel | None], out: Path) -> Path:
    """``report.md`` in ``out``."""
    title = "# fedvit report: " + " vs ".join(r.label for r in runs)
    intro = ("Generated by `fedvit-report` from " + ", ".join(f"`{r.path}`" for r in runs)
             + ". Every number comes from those folders' output files.")
    text = "\n\n".join([title, intro, runs_section(runs), accuracy_section(runs),
                        bytes_section(runs), phases_section(runs), links_section(runs, models),
                        wire_section(runs)]).rstrip()
    path = out / "report.md"
    path.write_text(text + "\n")
    return path


# ---------------------------------------------------------------------------------- CLI


def make_report(paths: Sequence[Path], out: Path | None = None) -> Path:
    """Load runs, derive, plot, write; the path of ``report.md``."""
    runs = load_runs(paths)
    out = Path(out) if out else (runs[0].path.parent
                                 / f"report-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    models = [link_model(r) for r in runs]
    cross = [(runs[i].label, runs[j].label, x)
             for i in range(len(runs)) for j in range(i + 1, len(runs))
             if models[i] and models[j] and (x := crossover_mbps(models[i], models[j]))]
    plot_accuracy(runs, out / PLOTS["accuracy"])
    plot_accuracy(runs, out / PLOTS["accuracy-mb"], x_key="cumulative-mb")
    plot_phases(runs, out / PLOTS["phases"])
    plot_bandwidth(runs, models, cross, out / PLOTS["bandwidth"])
    return write_markdown(runs, models, out)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fedvit-report``."""
    parser = argparse.ArgumentParser(
        prog="fedvit-report", description="Compare finished fedvit runs: report.md + plots.")
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="run folders written by the app (<outputs-dir>/<time>-<strategy>)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: <first run's parent>/report-<time>)")
    args = parser.parse_args(argv)
    try:
        path = make_report(args.runs, args.out)
    except ReportError as e:
        parser.exit(2, f"fedvit-report: error: {e}\n")
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
