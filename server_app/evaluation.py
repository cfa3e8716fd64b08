"""Central evaluation: the global model on the server's held-out test set, nothing else."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import ArrayRecord, MetricRecord
from torch import nn
from torch.utils.data import DataLoader

from fedvit.config.appconfig import AppConfig
from fedvit.model.tensors import load_exchanged
from fedvit.model.train import evaluate


def central_evaluation(model: nn.Module, loader: DataLoader, cfg: AppConfig
                       ) -> Callable[[int, ArrayRecord], MetricRecord]:
    """The ``evaluate_fn`` of ``Strategy.start`` (after every round and before round 1):
    loads the exchanged tensors into ``model`` (``ValueError`` unless ``arrays`` holds
    exactly those) and evaluates on ``loader``: ``accuracy`` (0..1), ``loss`` (mean
    cross-entropy, nats)."""

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        load_exchanged(model, arrays.to_torch_state_dict())
        res = evaluate(model, loader, cfg.torch_device, cfg.use_bf16)
        return MetricRecord({"accuracy": res["accuracy"], "loss": res["loss"]})

    return evaluate_fn
