"""The network model: each node's downlink, uplink and latency, and transfer times.

A node's link comes from its node config (``link-down-mbps``, ``link-up-mbps``,
``link-latency-ms``, set per SuperNode in deployment), else from the run config: the same
for every node (``link-profile = "uniform"``) or drawn per partition from a seeded
distribution (``"heterogeneous"``: bandwidths log-uniform between a tenth of the configured
value and the value, latency uniform between half and twice the configured one).

A node config may also say ``link-real = true``: its link values describe the link the
node really sits behind (a real deployment, or the link lab's shaped veths), not a
hypothetical one. The timeline then counts the node's measured pickup and return net of
the transfer that link implies (``server_app.timeline``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedvit.config import AppConfig, ConfigError
from fedvit.keys import LINK_KEYS, LINK_LATENCY_MS, LINK_REAL

# What a message costs on a real link beyond its serialised bytes (measured in the link lab,
# bench/links.py; see README "The link lab"):
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

    def down_s(self, nbytes: int, objects: int = 0) -> float:
        """Seconds to move a message from the server to the node: latency, then its
        objects' calls (``object_seconds``); without an object count, latency plus its
        bytes on the wire at the link's rate.

        Args:
            nbytes: the message's serialised bytes (``fedvit.wire.message_size``).
            objects: its objects (0: unknown).

        Returns:
            Seconds.
        """
        wire = wire_bytes(nbytes, objects, PULL_OBJECT_BYTES)
        return self.latency_ms / 1e3 + object_seconds(wire, objects, self.down_mbps,
                                                      self.latency_ms)

    def up_s(self, nbytes: int, objects: int = 0) -> float:
        """Seconds to move a reply from the node to the server (as ``down_s``, with a
        pushed object's framing).

        Args:
            nbytes: the reply's serialised bytes.
            objects: its objects (0: unknown).

        Returns:
            Seconds.
        """
        wire = wire_bytes(nbytes, objects, PUSH_OBJECT_BYTES)
        return self.latency_ms / 1e3 + object_seconds(wire, objects, self.up_mbps,
                                                      self.latency_ms)

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


def wire_bytes(nbytes: int, objects: int, per_object: int) -> float:
    """Bytes a message takes on the link.

    Args:
        nbytes: its serialised bytes.
        objects: its objects (one HTTP call each).
        per_object: HTTP framing bytes per object (``PULL_OBJECT_BYTES`` or
            ``PUSH_OBJECT_BYTES``).

    Returns:
        ``nbytes`` in TCP/IP/Ethernet frames (``FRAME_FACTOR``) plus the framing, bytes.
    """
    return nbytes * FRAME_FACTOR + objects * per_object


def object_seconds(wire: float, objects: int, mbps: float, latency_ms: float) -> float:
    """Seconds to move ``objects`` objects of ``wire`` bytes (on the wire, in all) one call
    each, two calls in flight, over a link of ``mbps`` and ``latency_ms``.

    A call of an object of average size takes ``OBJECT_CALL_S`` + a round trip + its bytes'
    time; an object costs half of that, but at least its bytes' time. Bulk transfers are
    link-bound (bytes ÷ rate), many small objects call-bound.

    Args:
        wire: bytes on the wire, all objects together (``wire_bytes``).
        objects: how many objects (0: bytes ÷ rate only).
        mbps: the link's rate, megabits per second.
        latency_ms: its one-way latency, milliseconds.

    Returns:
        Seconds.
    """
    on_link = wire * 8 / (mbps * 1e6)
    if objects <= 0:
        return on_link
    per_object = on_link / objects
    call = OBJECT_CALL_S + 2 * latency_ms / 1e3 + per_object
    return objects * max(per_object, call / 2)


def transfer_seconds(nbytes: float, mbps: float, latency_ms: float) -> float:
    """One message's time on a link.

    Args:
        nbytes: bytes to move.
        mbps: the rate, megabits (10^6 bit) per second.
        latency_ms: one-way latency, milliseconds.

    Returns:
        Seconds: latency plus serialisation.
    """
    return latency_ms / 1e3 + nbytes * 8 / (mbps * 1e6)


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
