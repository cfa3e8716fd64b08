"""When the kernel saw a link busy: per-node transfer times from sampled byte counters.

A ``CounterSampler`` reads ``/proc/<pid>/net/dev`` (the interfaces of that process's network
namespace: no ``setns`` needed) every ``interval_s`` in a thread. ``busy_span`` is how long
one direction of a link carried a transfer in a window: from the first to the last sampling
interval with at least ``threshold`` bytes. Polls and heartbeats (under a kilobyte) stay
below it; a shaped link's transfer (one full-size segment per packet in the link lab)
crosses it every frame time. The span includes the transfer's stalls (TCP slow start,
Flower's object requests one after another), as a projection must.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

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
    """Samples of (wall-clock time, {interface: (rx, tx)}) of ``interfaces`` (empty: all),
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
        """Drop the samples before wall-clock ``t`` but the last (its interval crosses ``t``):
        a long run takes 100 a second."""
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
        """(start of the first, end of the last) busy sampling interval in [start, end],
        wall clock; None if none was busy."""
        busy = [(t0, t1) for t0, t1, n in self._deltas(interface, direction, start, end)
                if n >= threshold]
        return (busy[0][0], busy[-1][1]) if busy else None

    def busy_span(self, interface: str, direction: str, start: float, end: float,
                  threshold: int = DEFAULT_THRESHOLD) -> float:
        """Seconds of ``busy_interval`` (0.0: none); ``direction`` "down" is the
        SuperLink-side veth's tx, "up" its rx."""
        busy = self.busy_interval(interface, direction, start, end, threshold)
        return busy[1] - busy[0] if busy else 0.0
