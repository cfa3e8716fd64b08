"""The link model's costs measured from a run's own replies: per-object framing and per-call
handling (``fedvit.wire.links.WireCosts``), from the SuperLink side's byte counters.

Where the ServerApp can sample the kernel's counters of each node's link (the link lab:
``server_app.wire_truth``), every reply gives two samples, one per direction, each over its
window on the server's clock: the download from the server's push (the start of the push
call) to the node's ``t-mod-in``, the upload from the node's ``t-mod-out`` to the server's
pull. From a sample:

* **framing per object** = (kernel bytes in the window − message bytes × ``FRAME_FACTOR``)
  ÷ objects: what a pulled (download) or pushed (upload) object adds beyond its bytes in
  TCP/IP frames (HTTP and protobuf framing, the node's request headers, ACKs and polls in
  the window). A sample whose kernel bytes fall short of the books' (Flower sent an
  identical object once, e.g. the zero B matrices of a fresh LoRA adapter) says nothing
  and is left out, as are messages of fewer than ``MIN_OBJECTS`` objects.
* **handling per call**, from call-bound messages only (on a link that did not change
  during the message: the lab's manifest holds each node's link over time), by inverting
  the model's price
  (``fedvit.wire.links.object_seconds``: busy span = objects × max(b, (call + RTT + b) ÷ 2), b =
  one object's bytes' time on the node's link): call = 2 × span ÷ objects − RTT − b,
  used where the call's term clearly wins the max: call + RTT ≥ ``CALL_BOUND`` × b (then
  the span measures calls, not bytes; near the boundary a stall inside a link-bound
  transfer would pass for a long call), and the model's floor of one call carrying every
  byte (``fedvit.wire.links.one_call_floor``) does not bind (a packed message's few objects).
  On a link with latency a bulk message is call-bound too (a fedavg object's bytes at
  8 Mbit/s take 76 ms, a call + 100 ms more).

Each quantity is the median over the run's samples so far (robust against the first
round's app-bundle download and a window holding a stray poll); where no sample measures
it, the default (``fedvit.wire.links.DEFAULT_COSTS``) stays. ``WireCosts.source`` says which:
``"link-lab counters, N messages"`` (and which quantities kept their default), or
``"default"``. A deployment without counters (no ``$FEDVIT_LINKLAB``) keeps the defaults.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fedvit import keys
from fedvit.keys import WIRE_COST_KEYS
from fedvit.wire.links import DEFAULT_COSTS, FRAME_FACTOR, WireCosts, wire_bytes
from server_app.timeline import NodeTimes
from server_app.wire_sampler import CounterSampler

MIN_OBJECTS = 4  # fewer objects: framing and calls drown in a window's polls
CALL_BOUND = 1.5  # a message is call-bound where call + RTT >= this × one object's bytes' time
SOURCE = "link-lab counters"


@dataclass(frozen=True)
class WireSample:
    """One message on one node's link, as the kernel saw it.

    Args:
        direction: "down" (a message the node pulled) or "up" (a reply it pushed).
        message_bytes: its serialised bytes (the books').
        objects: its objects (one call each).
        kernel_bytes: bytes the SuperLink-side veth counted in its window.
        busy_s: how long the link was busy with it (``CounterSampler.busy_span``), s.
        mbps: the node's link rate in that direction, Mbit/s (None: it changed during the
            message, which then says nothing about calls).
        latency_ms: the node's one-way latency, ms.
    """

    direction: str
    message_bytes: int
    objects: int
    kernel_bytes: int
    busy_s: float
    mbps: float | None
    latency_ms: float

    def framing(self) -> float:
        """Framing bytes per object: (kernel bytes − message bytes × FRAME_FACTOR) ÷
        objects."""
        return (self.kernel_bytes - self.message_bytes * FRAME_FACTOR) / self.objects

    def call_s(self, framing: float) -> float | None:
        """One call's handling, seconds, if this message was call-bound, else None.

        Args:
            framing: framing bytes per object (to price one object's bytes).
        """
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
    """The run's costs from its samples (module docstring), ``default`` where none measures.

    Args:
        samples: the run's messages so far.
        default: the costs of a quantity no sample measures.

    Returns:
        The costs, with ``source`` ``"link-lab counters, N messages"`` (N: the samples that
        measured something; ``"; default: <keys>"`` for quantities left at default), or
        ``default`` itself when no sample measured anything.
    """
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
    left = [k for k, ok in zip(WIRE_COST_KEYS, measured, strict=True) if not ok]
    source = f"{SOURCE}, {used} messages" + (f"; default: {', '.join(left)}" if left else "")
    return WireCosts(call, pull, push, source=source)


def link_during(node: NodeTimes, history: list[tuple[float, float, float, float]],
                start: float, end: float) -> tuple[float | None, float | None, float]:
    """The node's (down, up, latency) during [start, end]: from the lab's history (rates
    None if the link changed inside the window), else the node config's link.

    Args:
        node: the reply (its node-config link).
        history: ``(wall s, down, up, latency ms)`` from each change on, ascending (empty:
            none known).
        start, end: the window, wall clock.
    """
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
    """Each reply's two messages as the sampled counters saw them.

    Args:
        nodes: replies (their windows, bytes, objects and links).
        sampler: counters of the SuperLink-side veths, sampled through the replies' windows.
        interfaces: each partition's SuperLink-side interface; a reply of another partition
            is left out.
        history: each partition's real link over time (``link_during``; None or missing:
            the node config's link).
        push_starts: the start of each ``push_messages`` call by its end (``GridTimes.
            pushes``): a reply's ``pushed`` is its call's end, and a node may start pulling
            its message while the call still pushes the others', so the download's window
            opens at the call's start.
    """
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
