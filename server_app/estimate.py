"""The bandwidth estimate: (model down + update up) x clients x fraction x rounds.

A resumed run adds what the checkpoint estimated for the rounds before it, so every round
is estimated under the config it ran with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from fedvit.codecs.format import SEP
from fedvit.codecs.payload import CodecSpec, encode, encoded_bytes
from fedvit.config.appconfig import AppConfig
from fedvit.schema import dataclass_row, field_values


class _Row:
    """A dataclass as a row (kebab-case keys: a checkpoint's, a summary's) and back."""

    def as_row(self) -> dict:
        return dataclass_row(self)

    @classmethod
    def from_row(cls, row: dict):
        return cls(**field_values(row, [f.name for f in dataclasses.fields(cls)]))


@dataclass(frozen=True)
class Estimated(_Row):
    """Tensor bytes estimated for the rounds up to ``rounds`` (a checkpoint's)."""

    rounds: int = 0
    down: int = 0
    up: int = 0
    up_min: int = 0


@dataclass(frozen=True)
class Estimate(_Row):
    """Tensor bytes the run should move, computed before its first round.

    Exact for every codec but top-k, whose index encoding depends on the values: there
    ``up_bytes_per_message`` is the most a message can weigh, ``..._min`` the least.
    ``down``, ``up``, ``up_min`` include ``earlier_*`` (the rounds before a resume).
    """

    down_bytes_per_message: int
    up_bytes_per_message: int
    num_nodes: int
    train_clients: int
    evaluate_clients: int
    rounds: int
    down: int
    up: int
    up_bytes_per_message_min: int | None = None  # None: up_bytes_per_message
    up_min: int | None = None  # None: up
    earlier_rounds: int = 0
    earlier_down: int = 0
    earlier_up: int = 0
    earlier_up_min: int = 0

    def __post_init__(self) -> None:
        if self.up_bytes_per_message_min is None:
            object.__setattr__(self, "up_bytes_per_message_min", self.up_bytes_per_message)
        if self.up_min is None:
            object.__setattr__(self, "up_min", self.up)

    as_dict = _Row.as_row  # summary.json's "estimate"

    def through(self, server_round: int) -> Estimated:
        """What it estimates for rounds 1 .. ``server_round`` (for the checkpoint)."""
        n = server_round - self.earlier_rounds
        train, down_msgs = self.train_clients, self.train_clients + self.evaluate_clients
        up_min = self.up_bytes_per_message_min
        return Estimated(server_round,
                         self.earlier_down + self.down_bytes_per_message * down_msgs * n,
                         self.earlier_up + self.up_bytes_per_message * train * n,
                         self.earlier_up_min + up_min * train * n)

    def matches(self, down: int, up: int, rounds: int | None = None) -> bool:
        """Whether measured tensor bytes agree with the estimate of rounds 1 .. ``rounds``
        (None: all): ``down`` exactly, ``up`` exactly or, for top-k, within its range."""
        e = self.through(self.rounds if rounds is None else rounds)
        return down == e.down and e.up_min <= up <= e.up


def sampled(num_nodes: int, fraction: float, min_nodes: int) -> int:
    """How many nodes FedAvg samples: max(int(nodes x fraction), minimum); 0 if off."""
    return 0 if fraction == 0 else max(int(num_nodes * fraction), min_nodes)


def message_tensor_bytes(arrays: dict[str, np.ndarray], spec: CodecSpec) -> tuple[int, int]:
    """(least, most) tensor bytes of one message of ``arrays`` encoded with ``spec``; equal
    but for top-k, whose index part per tensor lies between ``min(k, ceil(n / 8))`` and
    ``min(4k, ceil(n / 8))`` bytes (one- or four-byte gaps, or the bitmap)."""
    if spec.name == "none":
        exact = sum(a.nbytes for a in arrays.values())
        return exact, exact
    encoded = encode(spec, arrays)
    total = encoded_bytes(encoded)
    if spec.name != "topk":
        return total, total
    least = most = total
    for key, arr in arrays.items():
        k, bitmap = encoded[f"{key}{SEP}val"].size, -(-arr.size // 8)
        sent = encoded[f"{key}{SEP}idx"].nbytes
        least += min(k, bitmap) - sent
        most += min(4 * k, bitmap) - sent
    return least, most


def estimate(arrays: dict[str, np.ndarray], num_nodes: int, cfg: AppConfig,
             earlier: Estimated | None = None) -> Estimate:
    """Train rounds send the model down and the update up to every sampled client;
    evaluation rounds (``fraction-evaluate`` > 0) send the model down once more. The rounds
    after ``earlier`` (a resume's; None: a new run) are estimated with ``cfg``."""
    earlier = earlier or Estimated()
    down = message_tensor_bytes(arrays, cfg.down_codec)[1]
    up_least, up = message_tensor_bytes(arrays, cfg.up_codec)
    est = Estimate(down, up, num_nodes, sampled(num_nodes, cfg.fraction_train, cfg.min_nodes),
                   sampled(num_nodes, cfg.fraction_evaluate, cfg.min_nodes),
                   cfg.num_server_rounds, 0, 0, up_least, 0, earlier.rounds, earlier.down,
                   earlier.up, earlier.up_min)
    total = est.through(cfg.num_server_rounds)
    return dataclasses.replace(est, down=total.down, up=total.up, up_min=total.up_min)
