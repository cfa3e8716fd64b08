"""The report's text: ``report.md``, one section per question, every number from the runs'
files (``load``) or the bandwidth model (``linkmodel``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from fedvit.schema import MB
from server_app.timeline import format_table
from tools.report.linkmodel import (
    SWEEP_MBPS,
    LinkModel,
    crossovers_mbps,
    fmt_rate,
)
from tools.report.load import Run, reference_run, value_text
from tools.report.plots import PLOTS
from tools.words import times

COMPARE_AT_MBPS = (10.0, 1000.0)
Crossing = tuple[str, str, float]  # (label, label, Mbit/s)


def _opt(v: float | None, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _links_text(links: dict | None) -> str:
    if not links:
        return "n/a"
    if links["profile"] == "node-config":
        return "per node: " + "; ".join(
            f"{pid}: {value_text(n['link-down-mbps'])}/{value_text(n['link-up-mbps'])} "
            f"Mbit/s, {value_text(n['link-latency-ms'])} ms" for pid, n in links["nodes"].items())
    return (f"{value_text(links['down-mbps'])}/{value_text(links['up-mbps'])} Mbit/s, "
            f"{value_text(links['latency-ms'])} ms, {links['profile']}")


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
            + md_table(header, rows))


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
        md_table(["run", "final central accuracy", "gap to best (points)"], rows),
        _figure("accuracy", "Central accuracy (server test split) after each round."),
        _figure("accuracy-mb", "Central accuracy against cumulative MB exchanged "
                "(log scale): accuracy bought per byte."),
    ])


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
                         f"round ({times(per_round, ref_round)}); {share:.2f} % in total.")
    return "\n\n".join(["## Bandwidth",
                        md_table(["run", "total MB", f"% of {ref.label}", "MB / round",
                                   f"% of {ref.label} per round"], rows),
                        "\n".join(lines)]).rstrip()


def phases_section(runs: Sequence[Run]) -> str:
    """``format_table`` with every run side by side, and the stacked-bar plot."""
    tables = {r.label: r.phase_table for r in runs if r.phase_table}
    missing = [r.label for r in runs if not r.phase_table]
    parts = ["## Where a round's time goes",
             "Mean of the steady rounds (all but the first). *Measured*: every second of "
             "the round given to one row (`unexplained`: what no timestamp covers); "
             "*projected*: each phase lasts as long as its critical path, the node whose "
             "download + work + upload on the run's links takes longest; *deployment*: the "
             "same plus a deployment's pickup, start-up and return per message."]
    if tables:
        parts += ["```\n" + format_table(tables) + "\n```",
                  _figure("phases", "Seconds per steady round by phase: measured, projected "
                          "on the run's links, and as a deployment, for each run.")]
    if missing:
        parts.append("No phase data (runs before the timing analysis): " + ", ".join(missing))
    return "\n\n".join(parts)


def crossings(runs: Sequence[Run], models: Sequence[LinkModel | None]) -> list[Crossing]:
    """Every pair of modelled runs' crossovers in the sweep (``crossovers_mbps``)."""
    return [(runs[i].label, runs[j].label, x)
            for i in range(len(runs)) for j in range(i + 1, len(runs))
            if models[i] and models[j] for x in crossovers_mbps(models[i], models[j])]


def _comparison(a: Run, ma: LinkModel, b: Run, mb: LinkModel, xs: Sequence[float]) -> str:
    lo, hi = SWEEP_MBPS
    if xs:
        below = a if ma.round_s(lo) < mb.round_s(lo) else b
        above = a if ma.round_s(hi) < mb.round_s(hi) else b
        at = " and ".join(f"**{fmt_rate(x)}** ({ma.round_s(x):.3f} s per round)" for x in xs)
        if len(xs) == 1:
            return (f"* {a.label} and {b.label} cross at {at}: below it {below.label} is "
                    f"faster, above it {above.label}.")
        return (f"* {a.label} and {b.label} cross {len(xs)} times, at {at}: {below.label} is "
                f"faster at {fmt_rate(lo)}, {above.label} at {fmt_rate(hi)}.")
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


LINKS_TEXT = (
    "Projected steady round with every node on the same link of bandwidth B both ways, "
    "as the timeline projects a round: per phase the critical path, the node whose own "
    "work + transfer on that link takes longest (`server_app.timeline.critical_path`), "
    "plus the server's rows; mean of the steady rounds. A message's transfer is its "
    "latency plus its objects moved one call each (`fedvit.wire.links`: their bytes in TCP/IP "
    "frames plus Flower's per-object framing at B, and per call its handling and a round "
    "trip, two calls in flight). The deployment curve adds pickup, start-up and return per "
    "message. The bandwidth below which communication exceeds half the round, and where "
    "two runs' curves cross, are found on the curves (bisection). *Fixed* (the round "
    "without transfer) and MB down/up (the critical replies' bytes as they take the wire) "
    "describe the critical path at the sweep's lowest bandwidth, where bytes decide which "
    "node is slowest; when one node is the slowest at every bandwidth and bytes set the "
    "time, B* = 8 × bytes / (fixed − per-message and per-call costs).")


def links_section(runs: Sequence[Run], models: Sequence[LinkModel | None],
                  cross: Sequence[Crossing] | None = None) -> str:
    """The bandwidth model per run, half-communication bandwidths, crossovers, the plot.

    Args:
        runs: the report's runs.
        models: each run's ``link_model`` (None: not modelled).
        cross: ``crossings(runs, models)`` if computed already.
    """
    cross = crossings(runs, models) if cross is None else cross
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
        half, slow = m.half_comm_mbps(), m.critical(SWEEP_MBPS[0])
        rows.append([r.label, f"{slow.fixed_s:.3f}", f"{slow.messages:g}",
                     f"{m.latency_ms:g}", f"{slow.down_bytes / MB:.6f}",
                     f"{slow.up_bytes / MB:.6f}", fmt_rate(half), at_links,
                     _opt(r.summary.get("projected-round-s"))])
        halves.append(f"* {r.label}: communication is more than half of the projected round "
                      + (f"below **{fmt_rate(half)}**{_outside(half)}." if 0 < half < math.inf else
                         "at every bandwidth (latency alone)." if half else "never."))
    pairs = [_comparison(runs[i], models[i], runs[j], models[j],
                         [x for a, b, x in cross if (a, b) == (runs[i].label, runs[j].label)])
             for i in range(len(runs)) for j in range(i + 1, len(runs))
             if models[i] and models[j]]
    hetero = any(r.links and r.links["profile"] != "uniform" for r in runs)
    return "\n\n".join(filter(None, [
        "## Round time against link bandwidth",
        LINKS_TEXT,
        "Links per node (heterogeneous, or from node config as in a deployment or the link "
        "lab): the sweep puts every node on one link with the nodes' mean latency, so the "
        "run's own projection is not a point of its curve." if hetero else "",
        md_table(header, rows),
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
        md_table(["run", "partition", "down wire B", "down books B", "up wire B",
                   "up books B", "down wire / books", "up wire / books"], rows)])


def write_markdown(runs: Sequence[Run], models: Sequence[LinkModel | None], out: Path,
                   cross: Sequence[Crossing] | None = None, time_to_accuracy: str = ""
                   ) -> Path:
    """Write ``report.md`` in ``out``.

    Args:
        runs: the labelled runs.
        models: each run's ``link_model``.
        out: an existing folder.
        cross: ``crossings(runs, models)`` if computed already.
        time_to_accuracy: the section ranking the runs by time to accuracy on their own
            links (``tools.replay.outputs.section``), or "".

    Returns:
        The path of ``report.md``.
    """
    title = "# fedvit report: " + " vs ".join(r.label for r in runs)
    intro = ("Generated by `fedvit-report` from " + ", ".join(f"`{r.path}`" for r in runs)
             + ". Every number comes from those folders' output files.")
    text = "\n\n".join([title, intro, runs_section(runs), accuracy_section(runs),
                        bytes_section(runs), phases_section(runs),
                        links_section(runs, models, cross), time_to_accuracy,
                        wire_section(runs)]).rstrip()
    path = out / "report.md"
    path.write_text(text + "\n")
    return path
