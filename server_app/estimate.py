"""The bandwidth lesson's estimate: (model down + update up) x clients x fraction x rounds."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from fedvit.config import AppConfig


@dataclass(frozen=True)
class Estimate:
    """Tensor bytes the run should move, computed before round 1."""

    tensor_bytes_per_message: int
    num_nodes: int
    train_clients: int
    evaluate_clients: int
    rounds: int
    down: int
    up: int

    def as_dict(self) -> dict:
        return asdict(self)


def sampled(num_nodes: int, fraction: float, min_nodes: int) -> int:
    """How many nodes FedAvg samples: max(int(nodes x fraction), minimum); 0 if off."""
    return 0 if fraction == 0 else max(int(num_nodes * fraction), min_nodes)


def estimate(tensor_bytes_per_message: int, num_nodes: int, cfg: AppConfig) -> Estimate:
    """Train rounds send the model down and the update up to every sampled client;
    evaluation rounds (``fraction-evaluate`` > 0) send the model down once more."""
    train = sampled(num_nodes, cfg.fraction_train, cfg.min_nodes)
    evaluate = sampled(num_nodes, cfg.fraction_evaluate, cfg.min_nodes)
    rounds = cfg.num_server_rounds
    return Estimate(
        tensor_bytes_per_message, num_nodes, train, evaluate, rounds,
        down=tensor_bytes_per_message * (train + evaluate) * rounds,
        up=tensor_bytes_per_message * train * rounds,
    )
