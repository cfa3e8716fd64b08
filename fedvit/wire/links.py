"""The link model: each node's downlink, uplink and latency, and a message's transfer time.
``link-real = true``: the node really sits behind that link, so the timeline nets it out of
measured times."""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedvit.config.appconfig import AppConfig, ConfigError
from fedvit.keys import LINK_KEYS, LINK_LATENCY_MS, LINK_REAL, WIRE_COST_KEYS

# A message's cost beyond its bytes, measured in the link lab (bench/links.py,
# docs/link-lab.md). Flower 1.41 moves a message one object per HTTP call (message, records,
# each array, each 5 MiB chunk), two calls in flight (FLWR_PRIVATE_MAX_CONCURRENT_OBJ_*).
FRAME_FACTOR = 1514 / 1448  # TCP/IPv4/Ethernet: 1448 payload bytes per 1514-byte frame
PULL_OBJECT_BYTES = 400  # HTTP + protobuf framing per object a node pulls
PUSH_OBJECT_BYTES = 1300  # per object a node pushes (its request headers too)
OBJECT_CALL_S = 0.017  # one call's handling at both ends, s: twice bench/links.py's 8.7 ms
#                        per object on an unshaped link (fedlora)


@dataclass(frozen=True)
class WireCosts:
    """A run's per-call handling (s) and per-object framing (bytes), recorded with each
    round's projection (``keys.WIRE_COST_KEYS`` columns); ``source``: where they come from."""

    call_s: float
    pull_object_bytes: float
    push_object_bytes: float
    source: str = "default"

    def as_dict(self) -> dict[str, float]:
        values = (self.call_s, self.pull_object_bytes, self.push_object_bytes)
        return dict(zip(WIRE_COST_KEYS, values, strict=True))

    @classmethod
    def from_dict(cls, values: Mapping, source: str = "default") -> WireCosts:
        """The costs ``as_dict`` wrote (a ``phases`` row); ValueError: a key missing or < 0."""
        for key in WIRE_COST_KEYS:
            value = values.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"wire cost '{key}' = {value!r} is not allowed: must be a "
                                 "number >= 0")
        return cls(*(float(values[k]) for k in WIRE_COST_KEYS), source=source)


DEFAULT_COSTS = WireCosts(OBJECT_CALL_S, PULL_OBJECT_BYTES, PUSH_OBJECT_BYTES)


@dataclass(frozen=True)
class Link:
    """One node's link: rates in megabits (10^6 bit) per second, one-way latency in ms;
    ``real``: the link the node really has."""

    down_mbps: float
    up_mbps: float
    latency_ms: float
    real: bool = False

    def down_s(self, nbytes: int, objects: int = 0, costs: WireCosts = DEFAULT_COSTS) -> float:
        """Seconds to move ``nbytes`` serialised bytes in ``objects`` objects (0: unknown,
        bytes ÷ rate): latency, then ``object_seconds``; ``up_s`` alike, pushed."""
        return self._transfer_s(nbytes, objects, costs, "down_mbps")

    def up_s(self, nbytes: int, objects: int = 0, costs: WireCosts = DEFAULT_COSTS) -> float:
        return self._transfer_s(nbytes, objects, costs, "up_mbps")

    def _transfer_s(self, nbytes: int, objects: int, costs: WireCosts, rate: str) -> float:
        wire = wire_bytes(nbytes, objects, _per_object(costs, rate))
        return self.latency_ms / 1e3 + object_seconds(wire, objects, getattr(self, rate),
                                                      self.latency_ms, costs)

    def as_metrics(self) -> dict[str, float]:
        values = (self.down_mbps, self.up_mbps, self.latency_ms, float(self.real))
        return dict(zip((*LINK_KEYS, LINK_REAL), values, strict=True))

    @classmethod
    def from_metrics(cls, metrics: Mapping) -> Link:
        """The link ``as_metrics`` wrote (no ``link-real``: not real); KeyError: a key missing."""
        return cls(*(float(metrics[k]) for k in LINK_KEYS), bool(metrics.get(LINK_REAL, 0)))


@dataclass(frozen=True)
class LinkCurve:
    """One node's link over time: ``links[i]`` from ``times[i]`` s (ascending from 0, else
    ValueError) to ``times[i + 1]``, the last for ever. A message sent at ``t`` waits the
    latency at ``t``, then moves by ``object_seconds``'s rule over the integrated rates."""

    times: tuple[float, ...]
    links: tuple[Link, ...]

    def __post_init__(self) -> None:
        if not self.links or len(self.times) != len(self.links) or self.times[0] != 0 or any(
                b <= a for a, b in zip(self.times, self.times[1:], strict=False)):
            raise ValueError(f"a link curve needs ascending times from 0, one link each: "
                             f"times {self.times!r}, {len(self.links)} links")

    @classmethod
    def constant(cls, link: Link) -> LinkCurve:
        return cls((0.0,), (link,))

    def _index(self, t: float) -> int:
        return max(bisect_right(self.times, t) - 1, 0)

    def at(self, t: float) -> Link:
        """The link in force at ``t`` seconds (before 0: the first)."""
        return self.links[self._index(t)]

    def down_s(self, start: float, nbytes: int, objects: int = 0,
               costs: WireCosts = DEFAULT_COSTS) -> float:
        """``Link.down_s`` (``up_s``: ``Link.up_s``) of a message sent at ``start``."""
        return self._transfer_s(start, nbytes, objects, costs, "down_mbps")

    def up_s(self, start: float, nbytes: int, objects: int = 0,
             costs: WireCosts = DEFAULT_COSTS) -> float:
        return self._transfer_s(start, nbytes, objects, costs, "up_mbps")

    def _transfer_s(self, start: float, nbytes: int, objects: int, costs: WireCosts,
                    rate: str) -> float:
        closed = self.at(start)._transfer_s(nbytes, objects, costs, rate)
        if self._index(start) == self._index(start + closed):
            return closed
        wire = wire_bytes(nbytes, objects, _per_object(costs, rate))
        latency = self.at(start).latency_ms / 1e3
        t = start + latency
        if objects <= 0:
            return latency + self.carry_s(t, wire, rate)
        for _ in range(objects):
            on_link = self.carry_s(t, wire / objects, rate)
            t += max(on_link, (costs.call_s + 2 * latency + on_link) / 2)
        floor = one_call_floor(self.carry_s(start + latency, wire, rate),
                               self.at(start).latency_ms, costs)
        return max(t - start, latency + floor)

    def carry_s(self, t: float, nbytes: float, rate: str = "down_mbps") -> float:
        """Seconds to carry ``nbytes`` from ``t``, the ``rate`` attribute integrated."""
        i, left, t0 = self._index(t), nbytes * 8.0, t
        while True:
            bps = getattr(self.links[i], rate) * 1e6
            if math.isinf(bps):
                return t - t0
            end = self.times[i + 1] if i + 1 < len(self.times) else math.inf
            if left <= bps * (end - t):
                return t + left / bps - t0
            left -= bps * (end - t)
            t, i = end, i + 1


def _per_object(costs: WireCosts, rate: str) -> float:
    return costs.pull_object_bytes if rate == "down_mbps" else costs.push_object_bytes


def wire_bytes(nbytes: int, objects: int, per_object: float) -> float:
    """Bytes on the link: ``nbytes`` in frames plus ``per_object`` bytes per object."""
    return nbytes * FRAME_FACTOR + objects * per_object


def object_seconds(wire: float, objects: int, mbps: float, latency_ms: float,
                   costs: WireCosts = DEFAULT_COSTS) -> float:
    """Seconds to move ``objects`` objects, ``wire`` bytes in all, one call each, two in
    flight (0 objects: bytes ÷ rate). A call takes ``costs.call_s`` + a round trip + its
    object's bytes' time; an object costs half a call but at least its bytes' time (the
    link carries one at a time); never less than ``one_call_floor``."""
    on_link = wire * 8 / (mbps * 1e6)
    if objects <= 0:
        return on_link
    per_object = on_link / objects
    call = costs.call_s + 2 * latency_ms / 1e3 + per_object
    return max(objects * max(per_object, call / 2), one_call_floor(on_link, latency_ms, costs))


def one_call_floor(on_link: float, latency_ms: float, costs: WireCosts = DEFAULT_COSTS) -> float:
    """Seconds any message takes at least: one call carrying all ``on_link`` seconds of bytes
    (binds where one object holds most bytes: a packed message)."""
    return costs.call_s + 2 * latency_ms / 1e3 + on_link


# Flower 1.41 starts a ClientApp process per message while its SuperNode still pulls it; the
# process asks for its objects once its runtime is imported, then after 1, 2, 4, 8, 10, 10, ... s
# (±20 %, not modelled; inflatable_utils.pull_objects), and gets them at the first ask after
# the whole download (bench/replay.py: downloads ending 17.5 s / 33 s -> about 26 s / 36 s).
PULL_BACKOFF_S = (1.0, 10.0)  # first retry, cap
FIRST_ASK_S = 0.75  # process start -> its first ask: Flower's runtime imported (bench/coldstart.py)


def message_wait_s(download_s: float) -> float:
    """Seconds from a ClientApp process's start to its message, downloaded ``download_s`` after it:
    the first ask at ``FIRST_ASK_S`` + 0, 1, 3, 7, 15, 25, ... s, not before the download ends."""
    t, step = 0.0, PULL_BACKOFF_S[0]
    while FIRST_ASK_S + t < download_s:
        t += step
        step = min(2 * step, PULL_BACKOFF_S[1])
    return FIRST_ASK_S + t


def node_link(cfg: AppConfig, node_config: Mapping, partition_id: int) -> Link:
    """Each ``link-*`` node-config value, else the run config's profile (``heterogeneous``: seeded
    by ``seed``, ``partition_id``: rates log-uniform in [0.1, 1] ×, latency uniform in [0.5, 2] ×
    the configured). ConfigError: a value not > 0 (latency >= 0), a non-bool ``link-real``."""
    values = [cfg.link_down_mbps, cfg.link_up_mbps, cfg.link_latency_ms]
    if cfg.link_profile == "heterogeneous":
        rng = np.random.default_rng([cfg.seed, partition_id])
        scales = [float(10 ** rng.uniform(-1, 0)) for _ in range(2)] + [float(rng.uniform(0.5, 2))]
        values = [v * f for v, f in zip(values, scales, strict=True)]
    for i, key in enumerate(LINK_KEYS):
        if key in node_config:
            try:
                values[i] = float(node_config[key])
            except (TypeError, ValueError):
                values[i] = float("nan")
            if not (values[i] >= 0 if key == LINK_LATENCY_MS else values[i] > 0):
                raise ConfigError(f"node config '{key}' = {node_config[key]!r} is not "
                                  "allowed: must be a number > 0 (latency >= 0)")
    real = node_config.get(LINK_REAL, False)
    if not isinstance(real, bool):
        raise ConfigError(f"node config '{LINK_REAL}' = {real!r} is not allowed: must be true or "
                          "false (the link-* values describe the node's real link)")
    return Link(*values, real=real)
