"""The link lab's command line: ``start`` (in the foreground until Ctrl-C) and ``stop``
(a lab left behind by a crash), ``python -m tools.deploy.linklab start|stop``."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from fedvit.config.paths import APP_ROOT
from fedvit.files import write_json
from tools.deploy.linklab.lab import Link, LinkLab
from tools.deploy.linklab.netns import LinkLabError, check_privileges, latencies, mbit
from tools.deploy.linklab.record import RECORD, load, teardown
from tools.deploy.processes import alive

DEFAULT_DIR = APP_ROOT / ".flwr" / "linklab"
OWNER_STOP_S = 60.0  # a running lab's owner gets this long to tear its lab down


def parse_links(text: str) -> list[Link]:
    """``"8:8 none 20:5 4"`` -> ``[(8.0, 8.0), None, (20.0, 5.0), (4.0, 4.0)]``; either side of
    a pair may be ``none`` (that direction unshaped).

    Raises:
        LinkLabError: an entry is not ``DOWN:UP``, ``DOWN`` or ``none``, a rate is not
            positive, or there is no entry.
    """
    links: list[Link] = []
    for entry in text.split():
        if entry.lower() == "none":
            links.append(None)
            continue
        sides = entry.split(":")
        if len(sides) == 1:
            sides = sides * 2
        if len(sides) != 2:
            raise LinkLabError(f"link {entry!r} is not DOWN:UP (Mbit/s), DOWN, or none")
        try:
            down, up = (None if s.lower() == "none" else float(s) for s in sides)
        except ValueError as err:
            raise LinkLabError(f"link {entry!r} is not DOWN:UP (Mbit/s), DOWN, or none") from err
        links.append((mbit(down, "down"), mbit(up, "up")))
    if not links:
        raise LinkLabError("no links given")
    return links


def _say(*args, file=None) -> None:
    """print, flushed; a closed stdout/stderr (the reader went away) is ignored."""
    try:
        print(*args, file=file or sys.stdout, flush=True)
    except (OSError, ValueError):
        pass


def parse_latencies(text: str | None, count: int) -> list[float | None] | None:
    """``"50"`` (every node) or ``"50 none 20"`` (per node; ``none``: no relay) -> one
    one-way latency in ms per node, None for no latency at all (``text`` None).

    Raises:
        LinkLabError: not a number or ``none``, or a per-node list of another length.
    """
    if text is None:
        return None
    entries = text.split()
    if len(entries) == 1:
        entries *= count
    try:
        values = [None if e.lower() == "none" else float(e) for e in entries]
    except ValueError as err:
        raise LinkLabError(f"--latency {text!r}: one-way ms per node, or none") from err
    return latencies(values, count)


def _cmd_start(args: argparse.Namespace) -> int:
    links = parse_links(args.links)
    latency = parse_latencies(args.latency, len(links))
    trace = None
    if args.trace:
        from tools.replay.traces import TraceError, read_trace
        try:
            trace = read_trace(args.trace)
            # the lab starts on the trace's first rows: each node's rates, and a relay
            # where the trace ever gives it a latency
            starts = [trace.link_at(i, 0.0) for i in range(len(links))]
            relay = [any(k.latency_ms > 0 for _, k in trace.changes(i))
                     for i in range(len(links))]
        except TraceError as err:
            raise LinkLabError(str(err)) from err
        links = [(k.down_mbps, k.up_mbps) for k in starts]
        given = latency or [None] * len(links)
        latency = [g if g is not None or not r else k.latency_ms
                   for g, r, k in zip(given, relay, starts, strict=True)]
    lab = LinkLab(links, args.dir, latency_ms=latency, app_dir=args.app_dir,
                  start_timeout_s=args.timeout)
    _say(f"linklab: starting {len(links)} SuperNodes in {lab.workdir}")
    return_code = 1
    try:
        lab.start()  # Ctrl-C or SIGTERM during start: start() tears down what it made
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        for i, (down, up) in enumerate(lab.links):
            _say(f"linklab: node {i}: netns {lab.node_ns(i)}, {lab.superlink_if(i)} <-> "
                 f"{lab.node_if(i)}, down {down or 'unshaped'} / up {up or 'unshaped'} "
                 f"Mbit/s, latency "
                 f"{'none' if lab.latency[i] is None else f'{lab.latency[i]:g} ms'}")
        _say(f"linklab: up in {lab.timings['start_s']:.1f} s (SuperLink netns "
             f"{lab.superlink_ns}, logs {lab.logs})\n\nRun the app against it (from "
             f"{lab.app_dir}):\n\n  {shlex.join(lab.flwr_command())}\n\n"
             f"Ctrl-C here (or `python -m tools.deploy.linklab stop --dir {lab.workdir}`) "
             "stops it.")
        if trace is not None:
            lab.play_trace(trace, label="lab up")
            _say(f"linklab: playing {args.trace} from now (applied changes: "
                 f"{lab.player.path})")
        return_code = 0
        while not stop.wait(1.0):
            gone = [p["name"] for p in lab.processes()
                    if p["name"] in ("superlink",) or p["name"].startswith("supernode-")
                    if not alive(p)]
            if gone:
                _say(f"linklab: {', '.join(gone)} exited; stopping the lab", file=sys.stderr)
                return_code = 1
                break
    except (KeyboardInterrupt, SystemExit):
        _say("linklab: interrupted during start-up", file=sys.stderr)
        return_code = 130
    finally:  # teardown first: a closed stdout must not keep it from running
        lab.stop()
        _say(f"linklab: stopped in {lab.timings.get('stop_s', 0):.1f} s; leftovers: "
             f"{lab.leftovers() or 'none'}")
    return return_code


def _cmd_stop(args: argparse.Namespace) -> int:
    path = Path(args.dir) / RECORD
    if not path.is_file():
        print(f"linklab: no lab recorded in {args.dir}", file=sys.stderr)
        return 1
    record = load(path)
    if record.get("stopped"):
        print(f"linklab: the lab in {args.dir} was stopped already")
        return 0
    owner = record.get("owner") or {}
    if owner.get("pid") and alive({"pid": owner["pid"], "start": owner.get("start")}) \
            and owner["pid"] != os.getpid():
        os.kill(int(owner["pid"]), signal.SIGTERM)  # it tears its own lab down
        deadline = time.monotonic() + OWNER_STOP_S
        while time.monotonic() < deadline and not load(path).get("stopped"):
            time.sleep(0.2)
        record = load(path) or record
    if not record.get("stopped"):
        check_privileges()
        problems = teardown(record)
        record["stopped"] = True
        write_json(path, record, indent=1)
        if problems:
            print("linklab: teardown left: " + "; ".join(problems), file=sys.stderr)
            return 1
    print(f"linklab: stopped the lab in {args.dir}")
    return 0


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m tools.deploy.linklab start|stop``.

    Args:
        argv: command-line arguments (None: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 when the lab ran and went, 1 on an error (said on stderr), 130
        when interrupted during start-up.
    """
    parser = argparse.ArgumentParser(prog="python -m tools.deploy.linklab",
                                     description="A link lab: a Flower deployment with one "
                                     "shaped network link per SuperNode.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    start = sub.add_parser("start", help="start a lab, stay in the foreground until Ctrl-C")
    start.add_argument("--links", required=True,
                       help='per node "DOWN:UP" Mbit/s, one value for both ways, or "none", '
                       'e.g. "8:8 none 20:5" or "8 8"')
    start.add_argument("--latency", help='one-way ms through a delay relay: one value for '
                       'every node, or per node with "none" for no relay, e.g. "50 none"')
    start.add_argument("--trace", help="a link trace file (partition,t-s,down-mbps,up-mbps,"
                       "latency-ms) played onto the links from when the lab is up; the lab "
                       "starts on its t-s 0 rows (they replace --links' rates), with a delay "
                       "relay for every node the trace ever gives a latency")
    start.add_argument("--dir", default=str(DEFAULT_DIR),
                       help="work dir: record, manifest, logs, FLWR_HOME")
    start.add_argument("--app-dir", default=str(APP_ROOT))
    start.add_argument("--timeout", type=float, default=90.0, help="start-up timeout (s)")
    stop = sub.add_parser("stop", help="tear down the lab recorded in --dir")
    stop.add_argument("--dir", default=str(DEFAULT_DIR))
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        return _cmd_start(args) if args.cmd == "start" else _cmd_stop(args)
    except LinkLabError as err:
        print(f"linklab: error: {err}", file=sys.stderr)
        return 1
