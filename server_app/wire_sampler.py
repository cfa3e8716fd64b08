"""When the kernel saw a link busy: per-node transfer times, from sampled byte counters.

A ``CounterSampler`` reads ``/proc/<pid>/net/dev`` of a process inside the SuperLink's
network namespace every ``interval_s`` in a thread, and keeps the samples: that file shows
the interfaces of *that* process's namespace, so the sampler needs no ``setns``. In the link
lab the ServerApp samples its own namespace's veths during the run (``server_app.recorder``,
for ``server_app.calibration``); a bench samples the SuperLink's (``bench/links.py``).
``busy_span`` then says how long one direction of one link carried a transfer inside a
window: from the start of the first sampling interval in which at least ``threshold`` bytes
crossed to the end of the last one. Polls and heartbeats (well under a
kilobyte each) stay below the threshold; a message's transfer, paced by a shaped link in
full-size frames (the link lab sends one segment per packet), crosses it at least once
every frame time.

The span includes whatever stalls the transfer had inside it (TCP slow start, requests
for Flower's objects one after another), which is what a projection must match.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_INTERVAL_S = 0.01
DEFAULT_THRESHOLD = 1200  # bytes per interval: less than one full frame, more than a poll


def read_net_dev(pid: int) -> dict[str, tuple[int, int]]:
    """{interface: (rx bytes, tx bytes)} of process ``pid``'s network namespace.

    Raises:
        OSError: the process is gone.
    """
    out = {}
    for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]:
        name, _, data = line.partition(":")
        fields = data.split()
        out[name.strip()] = (int(fields[0]), int(fields[8]))
    return out


@dataclass
class CounterSampler:
    """Samples of (wall-clock time, {interface: (rx, tx)}) while running (``interfaces``:
    only those, else every interface of the namespace). ``start``/``stop`` or a ``with``
    block; ``forget_before`` drops old samples (a long run keeps only what it still
    needs: 100 samples a second)."""

    pid: int
    interval_s: float = DEFAULT_INTERVAL_S
    interfaces: tuple[str, ...] = ()
    samples: list[tuple[float, dict[str, tuple[int, int]]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> CounterSampler:
        return self.__enter__()

    def stop(self) -> None:
        self.__exit__()

    def forget_before(self, t: float) -> None:
        """Drop the samples taken before wall-clock ``t`` (but the last of them, which
        starts the interval that crosses ``t``)."""
        with self._lock:
            keep = max(0, next((i for i, (ts, _) in enumerate(self.samples) if ts >= t),
                               len(self.samples)) - 1)
            del self.samples[:keep]

    def __enter__(self) -> CounterSampler:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

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
        """(interval start, interval end, bytes) of each sampling interval in the window."""
        col = 1 if direction == "down" else 0
        with self._lock:
            samples = list(self.samples)
        return [(t0, t1, b[interface][col] - a[interface][col])
                for (t0, a), (t1, b) in zip(samples, samples[1:], strict=False)
                if t0 >= start and t1 <= end]

    def bytes_in(self, interface: str, direction: str, start: float, end: float) -> int:
        """Bytes the kernel counted on one direction of ``interface`` inside the window."""
        return sum(n for _, _, n in self._deltas(interface, direction, start, end))

    def busy_interval(self, interface: str, direction: str, start: float, end: float,
                      threshold: int = DEFAULT_THRESHOLD) -> tuple[float, float] | None:
        """(start of the first, end of the last) busy sampling interval inside [start, end]
        (``busy_span``'s arguments), wall clock; None if no interval was busy."""
        busy = [(t0, t1) for t0, t1, n in self._deltas(interface, direction, start, end)
                if n >= threshold]
        return (busy[0][0], busy[-1][1]) if busy else None

    def busy_span(self, interface: str, direction: str, start: float, end: float,
                  threshold: int = DEFAULT_THRESHOLD) -> float:
        """Seconds from the first to the last busy sampling interval inside [start, end].

        Args:
            interface: the SuperLink-side veth of a node.
            direction: "down" (the interface's tx) or "up" (its rx).
            start, end: wall-clock window (e.g. a message's push and its reply's pull).
            threshold: bytes an interval must carry to count as busy.

        Returns:
            The span in seconds, 0.0 if no interval was busy.
        """
        busy = self.busy_interval(interface, direction, start, end, threshold)
        return busy[1] - busy[0] if busy else 0.0
