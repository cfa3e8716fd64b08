"""``fedvit-report RUN_DIR [RUN_DIR ...] [--out DIR]``: compare finished runs.

Reads only what the results writer left in each run folder and writes ``report.md`` with
four PNG plots next to it:

* accuracy per round and against cumulative MB exchanged (``rounds.json``);
* where a steady round's time goes, measured and projected (``summary.json`` phase table);
* the projected round time against link bandwidth (1 Mbit/s to 10 Gbit/s, both directions),
  as a simulation would see it and as a deployment would, with its fixed costs per message
  (``tools.report.linkmodel``: the timeline's projection, critical path included, of every
  steady round's replies in ``nodes.json`` on one link of each bandwidth);
* time to accuracy on the runs' own links: each run's rounds replayed back to back
  (``tools.replay``), ranked by time to the highest accuracy every run reaches, and where
  the two best swap on a uniform-link sweep;
* in the link lab, the bytes the kernel counted on each link against the books
  (``summary.json`` "wire").
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from tools.replay.engine import recorded
from tools.replay.outputs import plot as plot_time_to_accuracy
from tools.replay.outputs import section
from tools.replay.rank import compare
from tools.replay.specs import OWN, parse_links
from tools.report.linkmodel import link_model, recorded_rounds
from tools.report.load import ReportError, load_runs
from tools.report.markdown import crossings, write_markdown
from tools.report.plots import PLOTS, plot_accuracy, plot_bandwidth, plot_phases

TIME_TO_ACCURACY = "## Time to accuracy on the runs' own links"


def make_report(paths: Sequence[Path], out: Path | None = None) -> Path:
    """Load runs, model, plot, write.

    Args:
        paths: run folders.
        out: the report's folder (created); None: ``<first run's parent>/report-<time>``.

    Returns:
        The path of ``report.md``.

    Raises:
        ReportError: a run folder cannot be read (``tools.report.load``).
    """
    runs = load_runs(paths)
    out = Path(out) if out else (runs[0].path.parent
                                 / f"report-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    models = [link_model(r) for r in runs]
    cross = crossings(runs, models)
    plot_accuracy(runs, out / PLOTS["accuracy"])
    plot_accuracy(runs, out / PLOTS["accuracy-mb"], x_key="cumulative-mb")
    plot_phases(runs, out / PLOTS["phases"])
    plot_bandwidth(runs, models, cross, out / PLOTS["bandwidth"])
    replayable = [recorded(r) for r in runs if recorded_rounds(r) is not None]
    text = ""
    if replayable:
        comp = compare(replayable, parse_links(OWN))
        plot_time_to_accuracy(comp, out / PLOTS["time-to-accuracy"])
        text = section(comp, TIME_TO_ACCURACY, PLOTS["time-to-accuracy"])
    return write_markdown(runs, models, out, cross, text)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fedvit-report`` (and ``python -m tools.report``).

    Args:
        argv: command-line arguments (None: ``sys.argv[1:]``).

    Returns:
        0; an unreadable run folder exits with status 2 and the reason on stderr.
    """
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
