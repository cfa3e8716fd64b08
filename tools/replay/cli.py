"""``fedvit-replay RUN_DIR... --links SPEC [--devices SPEC] [--target ACC] [--out DIR]``.

Replays finished runs onto other links and devices (``tools.replay.engine``; nothing is
retrained), ranks them by time to the target accuracy, prints which run reaches it soonest,
by how much, and where the two best swap on a uniform-link sweep, and writes
``replay.md``, ``replay.csv``, ``replay.json`` and ``replay.png`` (``tools.replay.outputs``).
Every spec, file and run folder is checked before anything is written: a bad one exits
with status 2 and the reason on stderr.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

from tools.replay.engine import Recorded, recorded
from tools.replay.outputs import write_all
from tools.replay.rank import compare
from tools.replay.specs import OWN, DeviceSpec, LinkSpec, SpecError, parse_devices, parse_links
from tools.replay.traces import EVERY, TraceError
from tools.report.load import ReportError, load_runs


def _target(text: str) -> float:
    """``--target``: an accuracy in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not allowed: must be an accuracy in (0, 1] (e.g. 0.8, not a "
            "percentage)")
    return value


def check_partitions(runs: Sequence[Recorded], links: LinkSpec,
                     devices: DeviceSpec | None) -> None:
    """A trace or device spec that names a partition no run has is a typo, not a no-op.

    Raises:
        SpecError: a partition named by ``--links`` (a trace) or ``--devices`` that none of
            ``runs``' replies has.
    """
    have = sorted({n.partition_id for r in runs for rnd in r.rounds for n in rnd.nodes})
    named = {"--links": set(links.traces.curves) if links.traces is not None else set(),
             "--devices": set(devices.speeds) if devices is not None else set()}
    for option, parts in named.items():
        extra = sorted(p for p in parts if p != EVERY and p not in have)
        if extra:
            raise SpecError(f"{option} names partition(s) {extra}, which no run has: the "
                            f"runs' nodes hold partitions {have}")


def _creatable(out: Path) -> bool:
    """``out`` is a folder, or the nearest existing folder above it could hold it."""
    for folder in (out, *out.parents):
        if folder.exists():
            return folder.is_dir() and os.access(folder, os.W_OK)
    return False


def parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = argparse.ArgumentParser(
        prog="fedvit-replay",
        description="Time to accuracy of finished fedvit runs on other links and devices.")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR",
                   help="run folders written by the app (<outputs-dir>/<run-name>)")
    p.add_argument("--links", default=OWN, metavar="SPEC",
                   help="own (default: each node's recorded link) | D/U/L (Mbit/s down, up, "
                   "ms latency, every node) | heterogeneous:D/U/L (the run config's seeded "
                   "per-partition draw) | a trace CSV (partition,t-s,down-mbps,up-mbps,"
                   "latency-ms)")
    p.add_argument("--devices", default=None, metavar="SPEC",
                   help="device speed per partition: a CSV partition,speed or inline "
                   "0=0.5,*=1 (0.5 = twice as slow; default: as measured)")
    p.add_argument("--target", type=_target, default=None, metavar="ACC",
                   help="central accuracy to reach, in (0, 1] (default: the highest every "
                   "run reaches)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: <first run's parent>/replay-<time>)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fedvit-replay`` (and ``python -m tools.replay``).

    Returns:
        0; a bad spec, trace, device file or run folder exits with status 2 and the reason
        on stderr, before anything is written.
    """
    p = parser()
    args = p.parse_args(argv)
    try:
        links = parse_links(args.links)
        devices = parse_devices(args.devices) if args.devices is not None else None
        runs = [recorded(r) for r in load_runs(args.runs)]
        check_partitions(runs, links, devices)
        comp = compare(runs, links, devices, args.target)
    except TraceError as e:  # a trace without rows for a run's partition
        p.exit(2, f"fedvit-replay: error: --links {args.links!r}: {e}\n")
    except (SpecError, ReportError) as e:
        p.exit(2, f"fedvit-replay: error: {e}\n")
    out = args.out or (runs[0].run.path.parent / f"replay-{time.strftime('%Y%m%d-%H%M%S')}")
    if not _creatable(out):
        p.exit(2, f"fedvit-replay: error: --out {str(out)!r} is not allowed: it is a file or "
               "under one, or its parent cannot be created; must be a folder to create or "
               "write into\n")
    path = write_all(comp, out, args.links, args.devices)
    print(comp.winner)
    if comp.swap is not None:
        print(comp.swap.text().replace("**", ""))
    print(path)
    return 0
