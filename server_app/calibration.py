"""The link model's costs (``fedvit.wire.links.WireCosts``) measured from a run's replies
by the SuperLink-side veths' counters (the link lab, ``server_app.wire_sampler``).

Each reply gives a sample per direction: the download from the push call's start to the node's
``t-mod-in``, the upload from its ``t-mod-out`` to the pull. Framing per object = (kernel bytes −
message bytes × ``FRAME_FACTOR``) ÷ objects (HTTP framing, headers, ACKs, polls); a sample below the
books' bytes (Flower sent an identical object once, e.g. zero B matrices) or of under
``MIN_OBJECTS`` objects is left out. Handling per call inverts ``fedvit.wire.links.object_seconds``
(span = objects × max(b, (call + RTT + b) ÷ 2), b: one object's bytes' time): call = 2 × span ÷
objects − RTT − b, kept only where the link did not change during the message, call + RTT ≥
``CALL_BOUND`` × b (nearer, a stall would pass for a long call) and the one-call floor does not
bind. Each cost is the median over the run's samples so far (robust to the app-bundle download and
stray polls), else ``DEFAULT_COSTS``; ``WireCosts.source`` says which."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fedvit import keys
from fedvit.wire.links import DEFAULT_COSTS, FRAME_FACTOR, WireCosts, wire_bytes
from server_app.timeline import NodeTimes
from server_app.wire_sampler import CounterSampler

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

    def framing(self) -> float:  # bytes per object
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
        interface = interfaces.get(n.partition_id)
        if interface is None:
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
