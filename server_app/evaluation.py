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
    """The ``evaluate_fn`` Flower's ``Strategy.start`` calls after every round (and once
    before round 1): it loads the exchanged global tensors into ``model`` and evaluates.

    Args:
        model: the server's model (frozen backbone included); its exchanged tensors are
            overwritten on every call.
        loader: the central test set, batches of (images (B, C, H, W) float32, labels (B,)
            int64).
        cfg: the run config (device, bf16 autocast).

    Returns:
        ``evaluate_fn(server_round, arrays) -> MetricRecord`` with ``accuracy`` (0..1) and
        ``loss`` (mean cross-entropy, nats).

    Raises:
        ValueError: (from the call) ``arrays`` does not hold exactly the exchanged tensors.
    """

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        load_exchanged(model, arrays.to_torch_state_dict())
        res = evaluate(model, loader, cfg.torch_device, cfg.use_bf16)
        return MetricRecord({"accuracy": res["accuracy"], "loss": res["loss"]})

    return evaluate_fn
