"""Link trace files: each node's downlink, uplink and latency over time.

A trace is a CSV file with the header ``partition,t-s,down-mbps,up-mbps,latency-ms``:

==============  ==========================================================================
``partition``   the node's partition (an integer >= 0), or ``*``: every node without rows
                of its own
``t-s``         from when the row holds: seconds since the replay's time zero (the start
                of the run's first round)
``down-mbps``   server -> node rate, Mbit/s (10^6 bit/s), > 0
``up-mbps``     node -> server rate, Mbit/s, > 0
``latency-ms``  one-way latency, milliseconds, >= 0
==============  ==========================================================================

Each partition's rows are piecewise constant: a row holds from its ``t-s`` until the
partition's next row; the first row of each partition is at ``t-s`` 0, the times ascend
strictly; **after a partition's last row its last values hold for ever**. Lines starting
with ``#`` (comments: a trace's provenance) and blank lines are skipped. Rows of different
partitions may interleave.

A bad file fails loudly (``TraceError``) naming the file, the line, the column, the value
and what is allowed.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from fedvit.wire.links import Link, LinkCurve

COLUMNS = ("partition", "t-s", "down-mbps", "up-mbps", "latency-ms")
EVERY = "*"  # the partition of every node without rows of its own


class TraceError(ValueError):
    """A trace file that cannot be read, or does not cover a node."""


@dataclass(frozen=True)
class LinkTraces:
    """A trace file's link curves, by partition (``EVERY``: every other node).

    Args:
        path: the file it was read from.
        curves: each partition's links over time.
    """

    path: Path
    curves: dict[int | str, LinkCurve]

    def curve(self, partition: int) -> LinkCurve:
        """The partition's links over time (its own rows, else the ``*`` rows).

        Raises:
            TraceError: the trace has neither rows for ``partition`` nor ``*`` rows.
        """
        found = self.curves.get(partition, self.curves.get(EVERY))
        if found is None:
            raise TraceError(f"{self.path}: no rows for partition {partition} and no '*' "
                             f"rows (partitions with rows: {self.partitions_text()})")
        return found

    def link_at(self, partition: int, t_s: float) -> Link:
        """The partition's link at ``t_s`` seconds (after its last row: the last row's)."""
        return self.curve(partition).at(t_s)

    def changes(self, partition: int) -> list[tuple[float, Link]]:
        """The partition's (t-s, link) rows in time order: what a lab plays onto its
        shaping (the first at 0; the last holds for ever)."""
        curve = self.curve(partition)
        return list(zip(curve.times, curve.links, strict=True))

    def mean_latency_ms(self) -> float:
        """The mean of every row's latency, ms (the latency of a uniform-link sweep)."""
        rows = [link.latency_ms for c in self.curves.values() for link in c.links]
        return sum(rows) / len(rows)

    def partitions_text(self) -> str:
        """The partitions with rows, as text."""
        return ", ".join(str(p) for p in self.curves) or "none"


def _number(path: Path, line: int, column: str, text: str, low: float,
            strict: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < low or (strict and value == low):
        allowed = f"a number {'>' if strict else '>='} {low:g}"
        raise TraceError(f"{path}: line {line}: column '{column}' = {text!r} is not allowed: "
                         f"must be {allowed}")
    return value


def _partition(path: Path, line: int, text: str) -> int | str:
    if text == EVERY:
        return EVERY
    if text.isdigit():
        return int(text)
    raise TraceError(f"{path}: line {line}: column 'partition' = {text!r} is not allowed: "
                     f"must be an integer >= 0 or '{EVERY}' (every node without rows)")


def read_trace(path: Path | str) -> LinkTraces:
    """Read a trace file (format: the module docstring).

    Args:
        path: the CSV file.

    Returns:
        Its curves by partition.

    Raises:
        TraceError: the file is missing or unreadable, its header is not ``COLUMNS``, a
            value is not allowed, a partition's first row is not at 0 or its times do not
            ascend, or it has no rows.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's BOM too
    except OSError as e:
        raise TraceError(f"{path}: cannot be read ({e.strerror or e})") from e
    rows: dict[int | str, list[tuple[float, Link]]] = {}
    header: list[str] | None = None
    for line, cells in enumerate(csv.reader(text.splitlines()), start=1):
        if not cells or not "".join(cells).strip() or cells[0].lstrip().startswith("#"):
            continue
        cells = [c.strip() for c in cells]
        if header is None:
            if tuple(cells) != COLUMNS:
                raise TraceError(f"{path}: line {line}: header {','.join(cells)!r} is not "
                                 f"allowed: must be {','.join(COLUMNS)!r}")
            header = cells
            continue
        if len(cells) != len(COLUMNS):
            raise TraceError(f"{path}: line {line}: {len(cells)} columns, must be "
                             f"{len(COLUMNS)} ({','.join(COLUMNS)})")
        part = _partition(path, line, cells[0])
        t = _number(path, line, "t-s", cells[1], 0.0, strict=False)
        down, up = (_number(path, line, c, v, 0.0, strict=True)
                    for c, v in zip(COLUMNS[2:4], cells[2:4], strict=True))
        latency = _number(path, line, "latency-ms", cells[4], 0.0, strict=False)
        earlier = rows.setdefault(part, [])
        if not earlier and t != 0:
            raise TraceError(f"{path}: line {line}: column 't-s' = {cells[1]!r} is not "
                             f"allowed: partition {part}'s first row must be at 0")
        if earlier and t <= earlier[-1][0]:
            raise TraceError(f"{path}: line {line}: column 't-s' = {cells[1]!r} is not "
                             f"allowed: must be after partition {part}'s previous row "
                             f"({earlier[-1][0]:g} s)")
        earlier.append((t, Link(down, up, latency)))
    if not rows:
        raise TraceError(f"{path}: no rows: must have the header {','.join(COLUMNS)!r} and "
                         "at least one row")
    curves = {p: LinkCurve(tuple(t for t, _ in r), tuple(k for _, k in r))
              for p, r in rows.items()}
    return LinkTraces(path, curves)
