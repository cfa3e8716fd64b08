"""Wire truth: the bytes the kernel counted on each node's link, next to the books.

In the link lab (``tools.deploy.linklab``) each SuperNode reaches the SuperLink's namespace,
where the ServerApp runs, by its own veth; ``$FEDVIT_LINKLAB`` names a JSON manifest
``{"nodes": {"<partition-id>": {"superlink-if": "fv1a0", "history": [...]}, ...}}``. The
interface's ``tx_bytes`` (downlink) and ``rx_bytes`` (uplink), read at the run's start and
end, hold the books' messages plus HTTP, TCP/IP and Ethernet framing, ACKs, polls,
heartbeats and the app bundle's first download. ``history`` ([wall-clock s, down, up,
latency ms] from each change on) is each node's real link over time, for the calibration.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from math import inf
from pathlib import Path

from strategies import Books

LINKLAB_ENV = "FEDVIT_LINKLAB"
SYS_NET = Path("/sys/class/net")


def read_counters(interface: str) -> tuple[int, int]:
    """(tx bytes, rx bytes) counted on ``interface`` (``OSError``: not in this namespace)."""
    stats = SYS_NET / interface / "statistics"
    return int((stats / "tx_bytes").read_text()), int((stats / "rx_bytes").read_text())


class WireCounters:
    """Each partition's SuperLink-side counters, read at creation and by ``versus_books``."""

    def __init__(self, interfaces: dict[int, str], manifest: Path | None = None) -> None:
        self.interfaces = interfaces
        self.manifest = manifest
        self.before = {pid: read_counters(i) for pid, i in interfaces.items()}

    def link_history(self) -> dict[int, list[tuple[float, float, float, float]]]:
        """Each partition's link over time as the lab last wrote it: (wall s, down Mbit/s,
        up Mbit/s (unshaped: inf), latency ms); ``{}`` if the manifest cannot be read."""
        try:
            nodes = json.loads(self.manifest.read_text())["nodes"] if self.manifest else {}
            return {int(pid): [(float(t), inf if d is None else float(d),
                                inf if u is None else float(u), float(lat))
                               for t, d, u, lat in n.get("history", [])]
                    for pid, n in nodes.items()}
        except (OSError, KeyError, ValueError, TypeError):
            return {}

    @classmethod
    def from_env(cls) -> WireCounters | None:
        """The counters the lab's manifest names, None outside the link lab; ``ValueError``
        if the manifest cannot be read or names an interface not here."""
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
        """``{"<pid>": {"down-wire-bytes", "down-books-bytes", "down-wire-per-books",
        "up-...": ...}}`` (ratio None where the books hold none); ``nodes``: the run's
        ``NodeTimes`` (node id to partition)."""
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

