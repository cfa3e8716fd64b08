"""The bandwidth lesson's estimate: (model down + update up) x clients x fraction x rounds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedvit.codecs import CodecSpec, encode, encoded_bytes
from fedvit.config import AppConfig
from fedvit.schema import dataclass_row


@dataclass(frozen=True)
class Estimate:
    """Tensor bytes the run should move, computed before round 1."""

    down_bytes_per_message: int
    up_bytes_per_message: int
    num_nodes: int
    train_clients: int
    evaluate_clients: int
    rounds: int
    down: int
    up: int

    def as_dict(self) -> dict:
        """The estimate as ``summary.json`` holds it (kebab-case keys, bytes)."""
        return dataclass_row(self)


def sampled(num_nodes: int, fraction: float, min_nodes: int) -> int:
    """How many nodes FedAvg samples: max(int(nodes x fraction), minimum); 0 if off."""
    return 0 if fraction == 0 else max(int(num_nodes * fraction), min_nodes)


def message_tensor_bytes(arrays: dict[str, np.ndarray], spec: CodecSpec) -> int:
    """Tensor bytes of one message carrying ``arrays`` encoded with ``spec``. Exact for
    every codec but top-k, whose index encoding depends on the values."""
    if spec.name == "none":
        return sum(a.nbytes for a in arrays.values())
    return encoded_bytes(encode(spec, arrays))


def estimate(arrays: dict[str, np.ndarray], num_nodes: int, cfg: AppConfig) -> Estimate:
    """Train rounds send the model down and the update up to every sampled client;
    evaluation rounds (``fraction-evaluate`` > 0) send the model down once more."""
    down = message_tensor_bytes(arrays, cfg.down_codec)
    up = message_tensor_bytes(arrays, cfg.up_codec)
    train = sampled(num_nodes, cfg.fraction_train, cfg.min_nodes)
    evaluate = sampled(num_nodes, cfg.fraction_evaluate, cfg.min_nodes)
    rounds = cfg.num_server_rounds
    return Estimate(down, up, num_nodes, train, evaluate, rounds,
                    down=down * (train + evaluate) * rounds, up=up * train * rounds)
