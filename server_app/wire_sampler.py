"""The link lab's kernel byte counters: per node, totals against the books and busy spans.

In the link lab (``tools.deploy.linklab``) each SuperNode reaches the SuperLink's namespace,
where the ServerApp runs, by its own veth; ``$FEDVIT_LINKLAB`` names a JSON manifest
``{"nodes": {"<partition-id>": {"superlink-if": "fv1a0", "history": [...]}, ...}}``. Its
``tx_bytes`` (down) and ``rx_bytes`` (up) hold the books' messages plus HTTP, TCP/IP and
Ethernet framing, ACKs, polls, heartbeats and the app bundle's first download; ``history``
([wall-clock s, down, up, latency ms] from each change on) is the node's real link.
A ``CounterSampler`` reads ``/proc/<pid>/net/dev`` (that process's namespace: no ``setns``)
every ``interval_s`` in a thread. ``busy_span``: from the first to the last sampling interval
with at least ``threshold`` bytes; polls and heartbeats (under a kilobyte) stay below it, a
shaped link's transfer crosses it every frame time. It includes the transfer's stalls (TCP
slow start, Flower's object requests one after another), as a projection must."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from math import inf
from pathlib import Path

from strategies import Books

DEFAULT_INTERVAL_S = 0.01
DEFAULT_THRESHOLD = 1200  # bytes per interval: less than one full frame, more than a poll


def read_net_dev(pid: int) -> dict[str, tuple[int, int]]:
    """{interface: (rx bytes, tx bytes)} of process ``pid``'s namespace (``OSError``: gone)."""
    out = {}
    for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]:
        name, _, data = line.partition(":")
        fields = data.split()
        out[name.strip()] = (int(fields[0]), int(fields[8]))
    return out


@dataclass
class CounterSampler:
    """(wall-clock time, {interface: (rx, tx)}) of ``interfaces`` (empty: all), sampled
    between ``start`` and ``stop`` or in a ``with`` block."""

    pid: int
    interval_s: float = DEFAULT_INTERVAL_S
    interfaces: tuple[str, ...] = ()
    samples: list[tuple[float, dict[str, tuple[int, int]]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> CounterSampler:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    __enter__, __exit__ = start, stop

    def forget_before(self, t: float) -> None:
        """Drop samples before wall-clock ``t`` but the last (its interval crosses ``t``)."""
        with self._lock:
            keep = max(0, next((i for i, (ts, _) in enumerate(self.samples) if ts >= t),
                               len(self.samples)) - 1)
            del self.samples[:keep]

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                counters = read_net_dev(self.pid)
            except OSError:
                return
            if self.interfaces:
                counters = {i: counters[i] for i in self.interfaces if i in counters}
            with self._lock:
                self.samples.append((time.time(), counters))
            next_t += self.interval_s
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def _deltas(self, interface: str, direction: str, start: float, end: float
                ) -> list[tuple[float, float, int]]:
        col = 1 if direction == "down" else 0
        with self._lock:
            samples = list(self.samples)
        return [(t0, t1, b[interface][col] - a[interface][col])
                for (t0, a), (t1, b) in zip(samples, samples[1:], strict=False)
                if t0 >= start and t1 <= end]

    def bytes_in(self, interface: str, direction: str, start: float, end: float) -> int:
        return sum(n for _, _, n in self._deltas(interface, direction, start, end))

    def busy_interval(self, interface: str, direction: str, start: float, end: float,
                      threshold: int = DEFAULT_THRESHOLD) -> tuple[float, float] | None:
        """(start of the first, end of the last) busy interval in [start, end]; None: none."""
        busy = [(t0, t1) for t0, t1, n in self._deltas(interface, direction, start, end)
                if n >= threshold]
        return (busy[0][0], busy[-1][1]) if busy else None

    def busy_span(self, interface: str, direction: str, start: float, end: float,
                  threshold: int = DEFAULT_THRESHOLD) -> float:
        """Seconds of ``busy_interval``; "down" is the SuperLink-side veth's tx, "up" rx."""
        busy = self.busy_interval(interface, direction, start, end, threshold)
        return busy[1] - busy[0] if busy else 0.0


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
        """Each partition's link history as last written: (wall s, down Mbit/s, up Mbit/s
        (unshaped: inf), latency ms); ``{}`` if the manifest cannot be read."""
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
        """``{"<pid>": {"down-wire-bytes", "down-books-bytes", "down-wire-per-books", "up-..."}}``
        (ratio None where the books hold none); ``nodes``: the run's ``NodeTimes``."""
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

