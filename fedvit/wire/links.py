"""The network model: each node's downlink, uplink and latency, and transfer times.

A node's link comes from its node config (``link-down-mbps``, ``link-up-mbps``,
``link-latency-ms``, set per SuperNode in deployment), else from the run config: the same
for every node (``link-profile = "uniform"``) or drawn per partition from a seeded
distribution (``"heterogeneous"``: bandwidths log-uniform between a tenth of the configured
value and the value, latency uniform between half and twice the configured one).

A link may also change over time (``LinkCurve``: piecewise constant, a replay's trace).
What a message costs beyond its bytes (per-call handling, per-object framing) is a run's
property, ``WireCosts`` (``DEFAULT_COSTS`` from the constants below), recorded with every
round's projection.

A node config may also say ``link-real = true``: its link values describe the link the
node really sits behind (a real deployment, or the link lab's shaped veths), not a
hypothetical one. The timeline then counts the node's measured pickup and return net of
the transfer that link implies (``server_app.timeline``).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedvit.config.appconfig import AppConfig, ConfigError
from fedvit.keys import LINK_KEYS, LINK_LATENCY_MS, LINK_REAL, WIRE_COST_KEYS

# What a message costs on a real link beyond its serialised bytes (measured in the link lab,
# bench/links.py; see docs/link-lab.md):
# * TCP/IPv4 over Ethernet: a full 1514-byte frame carries 1448 payload bytes (20 IP + 32
#   TCP with timestamps + 14 Ethernet header bytes);
# * Flower 1.41 moves a message one object per HTTP call (the message, its records, each
#   array and each 5 MiB chunk): a pulled object's response adds its HTTP and protobuf
#   framing, a pushed object's request adds that plus the node's headers.
# * each object is one call (request and response), two calls in flight at a time
#   (FLWR_PRIVATE_MAX_CONCURRENT_OBJ_PULLS/PUSHES). One call takes the two ends' handling
#   (HTTP, the node's request signature, protobuf, the object store: OBJECT_CALL_S), a round
#   trip of the link's latency (modelled: no netem here) and its bytes' time on the link;
#   with two in flight an object costs half a call, but never less than its bytes' time,
#   since the link carries one object's bytes at a time (``object_seconds``).
FRAME_FACTOR = 1514 / 1448
PULL_OBJECT_BYTES = 400  # server -> node, per object of a message the node pulls
PUSH_OBJECT_BYTES = 1300  # node -> server, per object of a reply the node pushes
OBJECT_CALL_S = 0.017  # one call's handling, seconds: twice the elapsed time per object
#                        bench/links.py measures on an unshaped link (8.7 ms, fedlora)


@dataclass(frozen=True)
class WireCosts:
    """What a message costs on a link beyond its serialised bytes: a run's property (the
    machine's per-call handling, Flower's per-object framing), recorded with each round's
    projection (``phases`` columns ``call-s``, ``pull-object-bytes``, ``push-object-bytes``).

    Args:
        call_s: one call's handling at both ends, seconds (two calls in flight).
        pull_object_bytes: framing bytes per object of a message a node pulls.
        push_object_bytes: framing bytes per object of a reply a node pushes.
        source: where the values come from (``default``: the constants above).
    """

    call_s: float
    pull_object_bytes: float
    push_object_bytes: float
    source: str = "default"

    def as_dict(self) -> dict[str, float]:
        """``{"call-s": s, "pull-object-bytes": B, "push-object-bytes": B}``
        (``keys.WIRE_COST_KEYS``; the source is left out)."""
        values = (self.call_s, self.pull_object_bytes, self.push_object_bytes)
        return dict(zip(WIRE_COST_KEYS, values, strict=True))

    @classmethod
    def from_dict(cls, values: Mapping, source: str = "default") -> WireCosts:
        """The costs ``as_dict`` wrote (a ``phases`` row holds them among its columns).

        Raises:
            ValueError: a key is missing or its value is not a number >= 0.
        """
        for key in WIRE_COST_KEYS:
            value = values.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"wire cost '{key}' = {value!r} is not allowed: must be a "
                                 "number >= 0")
        return cls(*(float(values[k]) for k in WIRE_COST_KEYS), source=source)


DEFAULT_COSTS = WireCosts(OBJECT_CALL_S, PULL_OBJECT_BYTES, PUSH_OBJECT_BYTES)


@dataclass(frozen=True)
class Link:
    """One node's link to the server.

    Args:
        down_mbps: server -> node rate, megabits (10^6 bit) per second.
        up_mbps: node -> server rate, megabits per second.
        latency_ms: one-way latency, milliseconds.
        real: it is the link the node really has (not a hypothetical one).
    """

    down_mbps: float
    up_mbps: float
    latency_ms: float
    real: bool = False

    def down_s(self, nbytes: int, objects: int = 0, costs: WireCosts = DEFAULT_COSTS
               ) -> float:
        """Seconds to move a message from the server to the node: latency, then its
        objects' calls (``object_seconds``); without an object count, latency plus its
        bytes on the wire at the link's rate.

        Args:
            nbytes: the message's serialised bytes (``fedvit.wire.measure.message_size``).
            objects: its objects (0: unknown).
            costs: per-call handling and per-object framing.

        Returns:
            Seconds.
        """
        wire = wire_bytes(nbytes, objects, costs.pull_object_bytes)
        return self.latency_ms / 1e3 + object_seconds(wire, objects, self.down_mbps,
                                                      self.latency_ms, costs)

    def up_s(self, nbytes: int, objects: int = 0, costs: WireCosts = DEFAULT_COSTS
             ) -> float:
        """Seconds to move a reply from the node to the server (as ``down_s``, with a
        pushed object's framing).

        Args:
            nbytes: the reply's serialised bytes.
            objects: its objects (0: unknown).
            costs: per-call handling and per-object framing.

        Returns:
            Seconds.
        """
        wire = wire_bytes(nbytes, objects, costs.push_object_bytes)
        return self.latency_ms / 1e3 + object_seconds(wire, objects, self.up_mbps,
                                                      self.latency_ms, costs)

    def as_metrics(self) -> dict[str, float]:
        """The link as a reply's metrics.

        Returns:
            ``{LINK_KEYS...: value, "link-real": 0.0 or 1.0}``.
        """
        out = dict(zip(LINK_KEYS, (self.down_mbps, self.up_mbps, self.latency_ms),
                       strict=True))
        out[LINK_REAL] = float(self.real)
        return out

    @classmethod
    def from_metrics(cls, metrics: Mapping) -> Link:
        """The link ``as_metrics`` wrote.

        Args:
            metrics: a reply's metrics (``link-real`` may be missing: not real).

        Returns:
            The link.

        Raises:
            KeyError: a ``LINK_KEYS`` key is missing.
        """
        return cls(*(float(metrics[k]) for k in LINK_KEYS), bool(metrics.get(LINK_REAL, 0)))


@dataclass(frozen=True)
class LinkCurve:
    """One node's link over time, piecewise constant: ``links[i]`` holds from ``times[i]``
    seconds until ``times[i + 1]``; the last holds for ever. A static ``Link`` is the
    one-segment case (``constant``).

    A message sent at ``t`` waits the latency in force at ``t``, then moves object by object
    (``object_seconds``: two calls in flight, each object costing the larger of its bytes'
    time and half a call; at least one call carrying every byte), its bytes' time
    integrated over the rate curve from when they start: a transfer that straddles a rate
    change takes the right time. Where no change falls inside the message, this is
    ``Link.down_s``/``up_s`` exactly.

    Args:
        times: segment starts, seconds, ascending, the first 0.
        links: one per segment.

    Raises:
        ValueError: no segment, a length mismatch, a first time other than 0, or times
            not strictly ascending.
    """

    times: tuple[float, ...]
    links: tuple[Link, ...]

    def __post_init__(self) -> None:
        if not self.links or len(self.times) != len(self.links) or self.times[0] != 0 or any(
                b <= a for a, b in zip(self.times, self.times[1:], strict=False)):
            raise ValueError(f"a link curve needs ascending times from 0, one link each: "
                             f"times {self.times!r}, {len(self.links)} links")

    @classmethod
    def constant(cls, link: Link) -> LinkCurve:
        """``link`` at every time."""
        return cls((0.0,), (link,))

    def _index(self, t: float) -> int:
        return max(bisect_right(self.times, t) - 1, 0)

    def at(self, t: float) -> Link:
        """The link in force at ``t`` seconds (before 0: the first)."""
        return self.links[self._index(t)]

    def down_s(self, start: float, nbytes: int, objects: int = 0,
               costs: WireCosts = DEFAULT_COSTS) -> float:
        """Seconds to move a message down, sent at ``start`` (as ``Link.down_s``)."""
        closed = self.at(start).down_s(nbytes, objects, costs)
        if self._index(start) == self._index(start + closed):
            return closed
        return self._walk(start, wire_bytes(nbytes, objects, costs.pull_object_bytes),
                          objects, "down_mbps", costs)

    def up_s(self, start: float, nbytes: int, objects: int = 0,
             costs: WireCosts = DEFAULT_COSTS) -> float:
        """Seconds to move a reply up, sent at ``start`` (as ``Link.up_s``)."""
        closed = self.at(start).up_s(nbytes, objects, costs)
        if self._index(start) == self._index(start + closed):
            return closed
        return self._walk(start, wire_bytes(nbytes, objects, costs.push_object_bytes),
                          objects, "up_mbps", costs)

    def _walk(self, start: float, wire: float, objects: int, rate: str,
              costs: WireCosts) -> float:
        """A message across rate changes, object by object (``object_seconds``'s rule)."""
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
        """Seconds the link takes to carry ``nbytes`` from ``t``, its rate (``down_mbps``
        or ``up_mbps``) integrated over the segments."""
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


def wire_bytes(nbytes: int, objects: int, per_object: float) -> float:
    """Bytes a message takes on the link.

    Args:
        nbytes: its serialised bytes.
        objects: its objects (one HTTP call each).
        per_object: HTTP framing bytes per object (``WireCosts.pull_object_bytes`` or
            ``push_object_bytes``).

    Returns:
        ``nbytes`` in TCP/IP/Ethernet frames (``FRAME_FACTOR``) plus the framing, bytes.
    """
    return nbytes * FRAME_FACTOR + objects * per_object


def object_seconds(wire: float, objects: int, mbps: float, latency_ms: float,
                   costs: WireCosts = DEFAULT_COSTS) -> float:
    """Seconds to move ``objects`` objects of ``wire`` bytes (on the wire, in all) one call
    each, two calls in flight, over a link of ``mbps`` and ``latency_ms``.

    A call of an object of average size takes ``costs.call_s`` + a round trip + its bytes'
    time; an object costs half of that, but at least its bytes' time. Bulk transfers are
    link-bound (bytes ÷ rate), many small objects call-bound. A message never takes less
    than one call carrying all its bytes (``one_call_floor``).

    Args:
        wire: bytes on the wire, all objects together (``wire_bytes``).
        objects: how many objects (0: bytes ÷ rate only).
        mbps: the link's rate, megabits per second.
        latency_ms: its one-way latency, milliseconds.
        costs: the per-call handling (``call_s``).

    Returns:
        Seconds.
    """
    on_link = wire * 8 / (mbps * 1e6)
    if objects <= 0:
        return on_link
    per_object = on_link / objects
    call = costs.call_s + 2 * latency_ms / 1e3 + per_object
    return max(objects * max(per_object, call / 2), one_call_floor(on_link, latency_ms, costs))


def one_call_floor(on_link: float, latency_ms: float, costs: WireCosts = DEFAULT_COSTS) -> float:
    """Seconds any message takes at least, however its bytes are laid out: one call
    carrying all of them (handling + round trip + ``on_link``, its bytes' time, s, at
    ``latency_ms`` one way). It binds where one object holds most bytes (a packed message,
    ``fedvit.wire.packing``; the other objects' calls overlap with its call, two in flight)."""
    return costs.call_s + 2 * latency_ms / 1e3 + on_link


# A fresh ClientApp process (Flower 1.41 starts one per message while its SuperNode still
# pulls the message) asks the SuperNode for the message's objects once Flower's runtime is
# imported and, for an object not there yet, again after 1, 2, 4, 8, 10, 10, ... s (each
# ±20 %: not modelled; flwr/supercore/inflatable/inflatable_utils.py ``pull_objects``,
# ``PULL_INITIAL_BACKOFF``, ``PULL_BACKOFF_CAP``). The SuperNode stores a message's objects
# only once it has pulled them all (flwr/supernode/start_client_internal.py), so the
# process gets its message at the first ask after the whole download: up to 10 s after it
# on a slow link. Measured in the link lab (bench/replay.py, veth counters against the
# processes' stamps): downloads that ended 17.5 s after the process started gave the app
# its message about 26 s after the start, ones that ended at 33 s about 36 s after it.
PULL_BACKOFF_S = (1.0, 10.0)  # first retry, cap
FIRST_ASK_S = 0.75  # process start -> its first ask: Flower's runtime imported (bench/coldstart.py)


def message_wait_s(download_s: float) -> float:
    """Seconds from a fresh ClientApp process's start until it has its message, when the
    download to its SuperNode ends ``download_s`` after that start: the first of the asks
    at ``FIRST_ASK_S`` + 0, 1, 3, 7, 15, 25, 35, ... s at or after the download's end.

    Args:
        download_s: the message's download, seconds from the process's start.

    Returns:
        Seconds (``FIRST_ASK_S`` for a download that ended before the first ask).
    """
    t, step = 0.0, PULL_BACKOFF_S[0]
    while FIRST_ASK_S + t < download_s:
        t += step
        step = min(2 * step, PULL_BACKOFF_S[1])
    return FIRST_ASK_S + t


def node_link(cfg: AppConfig, node_config: Mapping, partition_id: int) -> Link:
    """This node's link: node config first, then the run config's profile.

    Args:
        cfg: the run config (``link-*`` keys, ``seed``).
        node_config: the node's config (``link-down-mbps``, ``link-up-mbps``,
            ``link-latency-ms``, ``link-real``, each optional).
        partition_id: the node's partition (seeds the heterogeneous draw).

    Returns:
        The link.

    Raises:
        ConfigError: a node-config link value that is not a number > 0 (latency >= 0),
            or a ``link-real`` that is not a bool.
    """
    if cfg.link_profile == "heterogeneous":
        rng = np.random.default_rng([cfg.seed, partition_id])
        down, up = (float(10 ** rng.uniform(-1, 0)) for _ in range(2))
        base = Link(cfg.link_down_mbps * down, cfg.link_up_mbps * up,
                    cfg.link_latency_ms * float(rng.uniform(0.5, 2.0)))
    else:
        base = Link(cfg.link_down_mbps, cfg.link_up_mbps, cfg.link_latency_ms)
    values = list((base.down_mbps, base.up_mbps, base.latency_ms))
    for i, key in enumerate(LINK_KEYS):
        if key in node_config:
            try:
                values[i] = float(node_config[key])
            except (TypeError, ValueError):
                values[i] = float("nan")
            low_ok = values[i] >= 0 if key == LINK_LATENCY_MS else values[i] > 0
            if not low_ok:
                raise ConfigError(f"node config '{key}' = {node_config[key]!r} is not "
                                  "allowed: must be a number > 0 (latency >= 0)")
    real = node_config.get(LINK_REAL, False)
    if not isinstance(real, bool):
        raise ConfigError(f"node config '{LINK_REAL}' = {real!r} is not allowed: must be true or "
                          "false (the link-* values describe the node's real link)")
    return Link(*values, real=real)
