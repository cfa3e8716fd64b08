"""FedLoRA: FedAvg over the trainable LoRA adapters and the classifier head only."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from fedvit.keys import LORA_A, LORA_AGG_ERROR_MAX, LORA_AGG_ERROR_MEAN, LORA_B, METRICS


class FedLoRA(FedAvg):
    """FedAvg of exactly ``exchanged_keys`` (the server keeps the full model for central
    evaluation). With A and B both exchanged (``naive``) mean(B)·mean(A) is not mean(B·A): the
    train metrics carry ``lora-agg-error-mean``/``-max``; ``ffa`` (A frozen) is exact."""

    def __init__(self, exchanged_keys: Iterable[str], **kwargs) -> None:
        super().__init__(**kwargs)
        self.exchanged_keys = frozenset(exchanged_keys)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        arrays, metrics = super().aggregate_train(server_round, replies)
        ok = [m for m in replies if not m.has_error()]
        if metrics is not None and ok and any(LORA_A in k for k in self.exchanged_keys):
            errors = naive_aggregation_errors(
                [{k: v.numpy() for k, v in m.content[self.arrayrecord_key].items()} for m in ok],
                [float(m.content[METRICS][self.weighted_by_key]) for m in ok])
            metrics[LORA_AGG_ERROR_MEAN] = float(np.mean(errors))
            metrics[LORA_AGG_ERROR_MAX] = float(np.max(errors))
        return arrays, metrics


def naive_aggregation_errors(clients: list[dict[str, np.ndarray]],
                             weights: list[float]) -> list[float]:
    """Per adapted layer: ||mean(B)·mean(A) - mean(B·A)|| / ||mean(B·A)|| (Frobenius,
    means weighted by ``weights``). In torch: numpy's norm (OpenBLAS) spins a second thread
    above 10,000 elements that slows the central evaluation after it."""
    w = torch.tensor(weights, dtype=torch.float64)
    w = w / w.sum()
    errors = []
    for a_key in sorted(k for k in clients[0] if LORA_A in k):
        b_key = a_key.replace(LORA_A, LORA_B)
        a = torch.stack([torch.tensor(c[a_key], dtype=torch.float64) for c in clients])
        b = torch.stack([torch.tensor(c[b_key], dtype=torch.float64) for c in clients])
        mean_ba = torch.einsum("n,nor,nri->oi", w, b, a)
        naive = torch.einsum("n,nor->or", w, b) @ torch.einsum("n,nri->ri", w, a)
        norm = float(torch.linalg.matrix_norm(mean_ba))
        errors.append(float(torch.linalg.matrix_norm(naive - mean_ba)) / norm
                      if norm > 0 else 0.0)
    return errors
