"""The link lab's kernel byte counters, and the link model's costs (``WireCosts``) measured
from them over a run's replies, each the median over the samples so far (robust to the app
bundle's download and stray polls), else ``DEFAULT_COSTS``; ``WireCosts.source`` says which.

``$FEDVIT_LINKLAB`` names the lab's manifest ``{"nodes": {"<partition-id>": {"superlink-if":
"fv1a0", "history": [...]}}}``: each node's veth in the SuperLink's namespace (the ServerApp's).
Handling per call inverts ``fedvit.wire.links.object_seconds``."""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from math import inf
from pathlib import Path

from fedvit import keys
from fedvit.wire.links import DEFAULT_COSTS, FRAME_FACTOR, WireCosts, wire_bytes
from server_app.timeline import NodeTimes
from strategies import Books

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
    interval_s: float = 0.01
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
        """Seconds of ``busy_interval`` (stalls included); "down": the SuperLink tx, "up": rx."""
        busy = self.busy_interval(interface, direction, start, end, threshold)
        return busy[1] - busy[0] if busy else 0.0


LINKLAB_ENV = "FEDVIT_LINKLAB"


def read_counters(interface: str) -> tuple[int, int]:
    """(tx bytes, rx bytes) counted on ``interface`` (``OSError``: not in this namespace)."""
    stats = Path("/sys/class/net") / interface / "statistics"
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
                row.update({f"{d}-wire-bytes": wire[d], f"{d}-books-bytes": booked,
                            f"{d}-wire-per-books": wire[d] / booked if booked else None})
            out[str(pid)] = row
        return out


MIN_OBJECTS = 4  # fewer objects: framing and calls drown in a window's polls
CALL_BOUND = 1.5  # a message is call-bound where call + RTT >= this × one object's bytes' time
SOURCE = "link-lab counters"


@dataclass(frozen=True)
class WireSample:
    """One message on one node's link, as the kernel saw it."""

    direction: str  # "down" (pulled by the node) or "up" (pushed)
    message_bytes: int  # the books'
    objects: int  # one call each
    kernel_bytes: int  # counted by the SuperLink-side veth in its window
    busy_s: float  # CounterSampler.busy_span
    mbps: float | None  # the link's rate that way; None: it changed during the message
    latency_ms: float  # one-way

    def framing(self) -> float:  # bytes per object; < 0: Flower sent an identical object once
        return (self.kernel_bytes - self.message_bytes * FRAME_FACTOR) / self.objects

    def call_s(self, framing: float) -> float | None:
        """One call's handling, seconds, if this message was call-bound, else None."""
        if self.objects < MIN_OBJECTS or self.busy_s <= 0 or self.mbps is None:
            return None
        per_object = self.busy_s / self.objects
        bytes_s = (wire_bytes(self.message_bytes, self.objects, framing) / self.objects
                   * 8 / (self.mbps * 1e6))
        rtt = 2 * self.latency_ms / 1e3
        call = 2 * per_object - rtt - bytes_s
        if call <= 0 or call + rtt < CALL_BOUND * bytes_s:
            return None
        floor = call + rtt + self.objects * bytes_s  # fedvit.wire.links.one_call_floor
        return call if self.objects * (call + rtt + bytes_s) / 2 >= floor else None


def calibrate(samples: Iterable[WireSample], default: WireCosts = DEFAULT_COSTS
              ) -> WireCosts:
    """The run's costs from its samples, ``default``'s for a quantity none measures (named in
    ``source``), ``default`` itself if none measured anything."""
    usable = [s for s in samples if s.objects >= MIN_OBJECTS]
    framing = {d: [s.framing() for s in usable if s.direction == d and s.framing() >= 0]
               for d in ("down", "up")}
    pull = statistics.median(framing["down"]) if framing["down"] else default.pull_object_bytes
    push = statistics.median(framing["up"]) if framing["up"] else default.push_object_bytes
    calls = [c for s in usable
             if (c := s.call_s(pull if s.direction == "down" else push)) is not None]
    call = statistics.median(calls) if calls else default.call_s
    used = sum(1 for s in usable if s.framing() >= 0
               or s.call_s(pull if s.direction == "down" else push) is not None)
    if not used:
        return default
    measured = (bool(calls), bool(framing["down"]), bool(framing["up"]))
    left = [k for k, ok in zip(keys.WIRE_COST_KEYS, measured, strict=True) if not ok]
    source = f"{SOURCE}, {used} messages" + (f"; default: {', '.join(left)}" if left else "")
    return WireCosts(call, pull, push, source=source)


def link_during(node: NodeTimes, history: list[tuple[float, float, float, float]],
                start: float, end: float) -> tuple[float | None, float | None, float]:
    """The node's (down, up, latency) in [start, end] (wall clock) by the lab's ascending
    ``history`` (rates None if it changed inside), else the node config's link."""
    if not history:
        return node.link.down_mbps, node.link.up_mbps, node.link.latency_ms
    _, down, up, latency = ([h for h in history if h[0] <= start] or history[:1])[-1]
    if any(start < h[0] <= end for h in history):
        return None, None, latency
    return down, up, latency


def samples_of(nodes: Iterable[NodeTimes], sampler: CounterSampler,
               interfaces: dict[int, str],
               history: dict[int, list[tuple[float, float, float, float]]] | None = None,
               push_starts: Mapping[float, float] | None = None) -> list[WireSample]:
    """Each reply's two messages as the counters saw them (partitions without an interface
    left out). ``push_starts``: each push call's start by its end: a node may pull its
    message while the call still pushes others', so the download's window opens there."""
    out = []
    for n in nodes:
        if (interface := interfaces.get(n.partition_id)) is None:
            continue
        pushed = (push_starts or {}).get(n.pushed, n.pushed)
        windows = {"down": (pushed, n.stamps[keys.MOD_IN], n.down_bytes, n.down_objects),
                   "up": (n.stamps[keys.MOD_OUT], n.pulled, n.up_bytes, n.up_objects)}
        for d, (start, end, nbytes, objects) in windows.items():
            if objects <= 0 or end <= start:
                continue
            down, up, latency = link_during(n, (history or {}).get(n.partition_id, []),
                                            start, end)
            out.append(WireSample(d, nbytes, objects, sampler.bytes_in(interface, d, start, end),
                                  sampler.busy_span(interface, d, start, end),
                                  down if d == "down" else up, latency))
    return out
