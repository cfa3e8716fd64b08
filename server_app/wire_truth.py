"""Wire truth: the bytes the kernel counted on each node's link, next to the books.

In the link lab (``tools.deploy.linklab``) every SuperNode is joined to the SuperLink's network
namespace by its own veth pair, and the ServerApp runs in that namespace. The lab names
each node's SuperLink-side interface in a JSON manifest whose path it puts in
``$FEDVIT_LINKLAB``::

    {"nodes": {"<partition-id>": {"superlink-if": "fv1a0", ...}, ...}}

The ServerApp reads that interface's ``tx_bytes`` (to the node: downlink) and ``rx_bytes``
(from the node: uplink) from ``/sys/class/net/<if>/statistics/`` when the run starts and
when it ends. The difference is everything the link carried meanwhile: the messages as the
books count them, plus HTTP framing, TCP/IP and Ethernet headers, TCP acknowledgements,
the SuperNode's polls and heartbeats, and the app bundle's first download.

The manifest also holds each node's real link over time (``"history"``: ``[wall-clock s,
down, up, latency ms]`` from each change on, e.g. as the lab plays a trace), which the
calibration (``server_app.calibration``) uses to price a message's bytes on the link it
really had.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from strategies import Books

LINKLAB_ENV = "FEDVIT_LINKLAB"
SYS_NET = Path("/sys/class/net")


def read_counters(interface: str) -> tuple[int, int]:
    """(tx bytes, rx bytes) the kernel counted on ``interface`` since it was created.

    Raises:
        OSError: no such interface in this process's network namespace.
    """
    stats = SYS_NET / interface / "statistics"
    return int((stats / "tx_bytes").read_text()), int((stats / "rx_bytes").read_text())


class WireCounters:
    """Counters of the SuperLink-side interface of each partition's link, read at creation
    (the run's start) and again by ``versus_books`` (its end)."""

    def __init__(self, interfaces: dict[int, str], manifest: Path | None = None) -> None:
        self.interfaces = interfaces
        self.manifest = manifest
        self.before = {pid: read_counters(i) for pid, i in interfaces.items()}

    def link_history(self) -> dict[int, list[tuple[float, float, float, float]]]:
        """Each partition's real link over time as the lab last wrote it: ``(wall-clock s
        from when it holds, down Mbit/s, up Mbit/s, latency ms)``, an unshaped direction
        ``inf`` (``{}`` without a manifest or history; an unreadable one says nothing)."""
        try:
            nodes = json.loads(self.manifest.read_text())["nodes"] if self.manifest else {}
            return {int(pid): [(float(t), _rate(d), _rate(u), float(lat))
                               for t, d, u, lat in n.get("history", [])]
                    for pid, n in nodes.items()}
        except (OSError, KeyError, ValueError, TypeError):
            return {}

    @classmethod
    def from_env(cls) -> WireCounters | None:
        """The counters the lab's manifest names, or None outside the link lab.

        Raises:
            ValueError: ``$FEDVIT_LINKLAB`` is set but its manifest cannot be read, or names
                an interface this namespace does not have.
        """
        path = os.environ.get(LINKLAB_ENV)
        if not path:
            return None
        try:
            nodes = json.loads(Path(path).read_text())["nodes"]
            return cls({int(pid): n["superlink-if"] for pid, n in nodes.items()}, Path(path))
        except (OSError, KeyError, ValueError) as err:
            raise ValueError(f"${LINKLAB_ENV} = {path!r}: not a readable link-lab manifest "
                             f"whose interfaces exist here ({err})") from err

    def versus_books(self, books: Books, nodes: Iterable) -> dict[str, dict[str, float]]:
        """Per partition (as a string key) and direction: the kernel's bytes, the books'
        message bytes, and wire ÷ books.

        Args:
            books: the run's books.
            nodes: ``NodeTimes`` of the run (they map node ids to partitions).

        Returns:
            ``{"<pid>": {"down-wire-bytes", "down-books-bytes", "down-wire-per-books",
            "up-...": ...}}``; a ratio is None where the books hold no bytes.
        """
        partition = {n.node_id: n.partition_id for n in nodes}
        out: dict[str, dict[str, float]] = {}
        for pid, interface in self.interfaces.items():
            tx, rx = read_counters(interface)
            wire = {"down": tx - self.before[pid][0], "up": rx - self.before[pid][1]}
            row: dict[str, float] = {}
            for d in ("down", "up"):
                booked = sum(r.message_bytes for r in books.rows
                             if r.direction == d and partition.get(r.node_id) == pid)
                row[f"{d}-wire-bytes"] = wire[d]
                row[f"{d}-books-bytes"] = booked
                row[f"{d}-wire-per-books"] = wire[d] / booked if booked else None
            out[str(pid)] = row
        return out


def _rate(mbps: float | None) -> float:
    return float("inf") if mbps is None else float(mbps)
