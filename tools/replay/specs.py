"""``--links`` and ``--devices``: what a replay puts each node on.

Link specs (``parse_links``):

=========================  ===============================================================
``own``                    each node's recorded link (``nodes.json``) — the default
``D/U/L``                  one link for every node: D Mbit/s down, U up, L ms one-way
                           latency (``uniform:D/U/L`` is the same)
``heterogeneous:D/U/L``    the run config's seeded per-partition draw
                           (``fedvit.wire.links.node_link``) with these base values and the
                           run's ``seed``
a path                     a trace file (``tools.replay.traces``): links that change over
                           time, per partition
=========================  ===============================================================

Device specs (``parse_devices``): a speed factor per partition that divides the node's
measured compute, ``deserialise`` and ``serialise`` seconds (0.5: twice as slow), either a
CSV file with the header ``partition,speed`` (``*``: every other partition; ``#`` lines are
comments) or inline ``0=0.5,*=1``. A partition without a factor (and no ``*``) keeps 1.

Bad specs raise ``SpecError`` naming the option, the value and what is allowed.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fedvit.config.appconfig import AppConfig
from fedvit.wire.links import Link, LinkCurve, node_link
from server_app.timeline import NodeTimes
from tools.replay.traces import EVERY, LinkTraces, TraceError, read_trace

OWN, UNIFORM, HETEROGENEOUS, TRACE = "own", "uniform", "heterogeneous", "trace"
NUMBER = r"(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+)"
LINK_VALUES = re.compile(rf"{NUMBER}/{NUMBER}/{NUMBER}")
LINKS_ALLOWED = ("own, D/U/L (one link for every node: Mbit/s down, Mbit/s up, ms one-way "
                 "latency; e.g. 10/5/50), uniform:D/U/L, heterogeneous:D/U/L, or the path "
                 "of a trace CSV file (partition,t-s,down-mbps,up-mbps,latency-ms)")
DEVICES_ALLOWED = ("a CSV file with the header partition,speed, or inline "
                   "PARTITION=SPEED,... (e.g. 0=0.5,*=1); partition an integer >= 0 or *, "
                   "speed a number > 0")


class SpecError(ValueError):
    """A ``--links`` or ``--devices`` value that is not allowed."""


@dataclass(frozen=True)
class LinkSpec:
    """The links a replay puts the nodes on.

    Args:
        kind: ``own``, ``uniform``, ``heterogeneous`` or ``trace``.
        text: the spec as given.
        link: the one link (``uniform``) or the draw's base values (``heterogeneous``).
        traces: the trace file's curves (``trace``).
    """

    kind: str
    text: str
    link: Link | None = None
    traces: LinkTraces | None = None

    def link_of(self, config: Mapping) -> Callable[[NodeTimes], Link | LinkCurve]:
        """Each node's link for a run of ``config`` (its ``config.json``).

        Raises:
            TraceError: a trace without rows for a node's partition (nor ``*`` rows).
        """
        if self.kind == OWN:
            return lambda n: n.link
        if self.kind == UNIFORM:
            return lambda _: self.link
        if self.kind == HETEROGENEOUS:
            cfg = AppConfig.from_run_config({
                "weights-path": "", "link-profile": HETEROGENEOUS, "seed": config["seed"],
                "link-down-mbps": self.link.down_mbps, "link-up-mbps": self.link.up_mbps,
                "link-latency-ms": self.link.latency_ms})
            return lambda n: node_link(cfg, {}, n.partition_id)
        return lambda n: self.traces.curve(n.partition_id)

    def latency_ms(self, recorded_ms: float) -> float:
        """The latency of a uniform-link sweep on this spec: the spec's (a trace's mean
        over its rows); ``own``: ``recorded_ms``, the runs' recorded one."""
        if self.kind == TRACE:
            return self.traces.mean_latency_ms()
        return recorded_ms if self.kind == OWN else self.link.latency_ms


@dataclass(frozen=True)
class DeviceSpec:
    """Device speed factors by partition (``*``: every other one).

    Args:
        text: the spec as given.
        speeds: factor by partition.
    """

    text: str
    speeds: dict[int | str, float]

    def speed(self, partition: int) -> float:
        """The partition's factor (its own, else ``*``'s, else 1)."""
        return self.speeds.get(partition, self.speeds.get(EVERY, 1.0))


def _link_values(spec: str, text: str) -> Link:
    match = LINK_VALUES.fullmatch(text)
    if not match:
        raise SpecError(f"--links {spec!r} is not allowed: {text!r} is not three numbers "
                        f"D/U/L; must be {LINKS_ALLOWED}")
    down, up, latency = (float(x) for x in match.groups())
    if not (down > 0 and up > 0 and latency >= 0 and math.isfinite(down + up + latency)):
        raise SpecError(f"--links {spec!r} is not allowed: down and up must be > 0, latency "
                        f">= 0; must be {LINKS_ALLOWED}")
    return Link(down, up, latency)


def parse_links(spec: str) -> LinkSpec:
    """Parse a ``--links`` value (the module's table).

    Raises:
        SpecError: not one of the allowed forms, a value out of range, or a trace file
            that cannot be read (its reason: file, line, column, value).
    """
    kind, _, rest = spec.partition(":")
    if spec == OWN:
        return LinkSpec(OWN, spec)
    if kind in (UNIFORM, HETEROGENEOUS):
        return LinkSpec(kind, spec, _link_values(spec, rest))
    path = Path(spec).expanduser()
    if "/" in spec and not path.exists() and not spec.endswith(".csv"):
        return LinkSpec(UNIFORM, spec, _link_values(spec, spec))  # D/U/L, or a near miss
    if not path.is_file():
        what = "a folder, not a trace file" if path.is_dir() else "no such file"
        raise SpecError(f"--links {spec!r} is not allowed ({what}): must be "
                        f"{LINKS_ALLOWED}")
    try:
        return LinkSpec(TRACE, spec, traces=read_trace(path))
    except TraceError as e:
        raise SpecError(f"--links {spec!r}: {e}") from e


def _speed(spec: str, where: str, partition: str, value: str) -> tuple[int | str, float]:
    try:
        speed = float(value)
    except ValueError:
        speed = math.nan
    if not (partition == EVERY or partition.isdigit()) or not (
            math.isfinite(speed) and speed > 0):
        raise SpecError(f"--devices {spec!r}: {where}partition {partition!r} speed {value!r} "
                        f"is not allowed: must be {DEVICES_ALLOWED}")
    return (partition if partition == EVERY else int(partition)), speed


def parse_devices(spec: str) -> DeviceSpec:
    """Parse a ``--devices`` value: a ``partition,speed`` CSV file, or inline pairs.

    Raises:
        SpecError: an unreadable file, a bad header, a partition that is not an integer
            >= 0 or ``*``, a speed that is not a number > 0, or a partition given twice.
    """
    path = Path(spec).expanduser()
    pairs: list[tuple[str, str, str]] = []  # (where, partition, speed)
    if path.is_file():
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's BOM too
        lines = [(i, c) for i, c in enumerate(csv.reader(text.splitlines()), 1)
                 if c and "".join(c).strip() and not c[0].lstrip().startswith("#")]
        if not lines or [c.strip() for c in lines[0][1]] != ["partition", "speed"]:
            raise SpecError(f"--devices {spec!r}: the first row is not allowed: must be the "
                            f"header partition,speed; must be {DEVICES_ALLOWED}")
        for i, cells in lines[1:]:
            if len(cells) != 2:
                raise SpecError(f"--devices {spec!r}: line {i}: {len(cells)} columns, must "
                                "be 2 (partition,speed)")
            pairs.append((f"line {i}: ", cells[0].strip(), cells[1].strip()))
    else:
        for item in spec.split(","):
            partition, eq, value = item.partition("=")
            if not eq:
                raise SpecError(f"--devices {spec!r} is not allowed (no such file, and "
                                f"{item!r} is not PARTITION=SPEED): must be {DEVICES_ALLOWED}")
            pairs.append(("", partition.strip(), value.strip()))
    speeds: dict[int | str, float] = {}
    for where, partition, value in pairs:
        key, speed = _speed(spec, where, partition, value)
        if key in speeds:
            raise SpecError(f"--devices {spec!r}: {where}partition {partition!r} is given "
                            "twice: each partition at most once")
        speeds[key] = speed
    return DeviceSpec(spec, speeds)
