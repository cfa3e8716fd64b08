"""The bandwidth estimate: (model down + update up) x clients x fraction x rounds.

A resumed run's estimate adds, for the rounds before it, what was estimated when they ran
(kept in the checkpoint), so every round is estimated under the config it ran with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from fedvit.codecs.format import SEP
from fedvit.codecs.payload import CodecSpec, encode, encoded_bytes
from fedvit.config.appconfig import AppConfig
from fedvit.schema import dataclass_row, field_values


@dataclass(frozen=True)
class Estimated:
    """Tensor bytes estimated for the rounds up to ``rounds`` (a checkpoint's)."""

    rounds: int = 0
    down: int = 0
    up: int = 0
    up_min: int = 0

    def as_row(self) -> dict:
        """As a checkpoint holds it (kebab-case keys)."""
        return dataclass_row(self)

    @classmethod
    def from_row(cls, row: dict) -> Estimated:
        """Inverse of ``as_row``."""
        return cls(**field_values(row, [f.name for f in dataclasses.fields(cls)]))


@dataclass(frozen=True)
class Estimate:
    """Tensor bytes the run should move, computed before its first round.

    ``up_bytes_per_message`` is exact for every codec but top-k, whose index encoding
    (the narrowest of gaps or bitmap) depends on the values: there it is the most a
    message can weigh and ``up_bytes_per_message_min`` the least (equal otherwise).
    ``earlier`` is what was estimated for the rounds before a resume; ``down``, ``up`` and
    ``up_min`` include it.
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

    def as_dict(self) -> dict:
        """The estimate as ``summary.json`` holds it (kebab-case keys, bytes)."""
        return dataclass_row(self)

    def through(self, server_round: int) -> Estimated:
        """What it estimates for rounds 1 .. ``server_round`` (for the checkpoint)."""
        n = server_round - self.earlier_rounds
        train, down_msgs = self.train_clients, self.train_clients + self.evaluate_clients
        up_min = self.up_bytes_per_message_min
        return Estimated(server_round,
                         self.earlier_down + self.down_bytes_per_message * down_msgs * n,
                         self.earlier_up + self.up_bytes_per_message * train * n,
                         self.earlier_up_min + up_min * train * n)

    @classmethod
    def from_dict(cls, row: dict) -> Estimate:
        """Inverse of ``as_dict`` (a summary's ``estimate``)."""
        return cls(**field_values(row, [f.name for f in dataclasses.fields(cls)]))

    def matches(self, down: int, up: int, rounds: int | None = None) -> bool:
        """Whether measured tensor bytes agree with the estimate of rounds 1 .. ``rounds``
        (None: all): ``down`` exactly, ``up`` exactly or, for top-k, within its range."""
        e = self.through(self.rounds if rounds is None else rounds)
        return down == e.down and e.up_min <= up <= e.up


def sampled(num_nodes: int, fraction: float, min_nodes: int) -> int:
    """How many nodes FedAvg samples: max(int(nodes x fraction), minimum); 0 if off."""
    return 0 if fraction == 0 else max(int(num_nodes * fraction), min_nodes)


def message_tensor_bytes(arrays: dict[str, np.ndarray], spec: CodecSpec) -> tuple[int, int]:
    """Tensor bytes of one message carrying ``arrays`` encoded with ``spec``: (least,
    most). Equal, and exact, for every codec but top-k; for top-k each tensor's index part
    lies between ``min(k, ceil(n / 8))`` bytes (one-byte gaps) and ``min(4k, ceil(n / 8))``
    (four-byte gaps or the bitmap; ``fedvit.codecs.format``)."""
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
    evaluation rounds (``fraction-evaluate`` > 0) send the model down once more.

    Args:
        arrays: the exchanged tensors.
        num_nodes: the nodes connected now.
        cfg: this run's config (its rounds after ``earlier``'s are estimated with it).
        earlier: what was estimated for the rounds before a resume (None: a new run).
    """
    earlier = earlier or Estimated()
    down = message_tensor_bytes(arrays, cfg.down_codec)[1]
    up_least, up = message_tensor_bytes(arrays, cfg.up_codec)
    train = sampled(num_nodes, cfg.fraction_train, cfg.min_nodes)
    evaluate = sampled(num_nodes, cfg.fraction_evaluate, cfg.min_nodes)
    rounds = cfg.num_server_rounds
    n = rounds - earlier.rounds
    return Estimate(down, up, num_nodes, train, evaluate, rounds,
                    down=earlier.down + down * (train + evaluate) * n,
                    up=earlier.up + up * train * n,
                    up_bytes_per_message_min=up_least,
                    up_min=earlier.up_min + up_least * train * n,
                    earlier_rounds=earlier.rounds, earlier_down=earlier.down,
                    earlier_up=earlier.up, earlier_up_min=earlier.up_min)
