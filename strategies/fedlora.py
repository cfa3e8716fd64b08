"""FedLoRA: FedAvg over the trainable LoRA adapters and the classifier head only."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from fedvit.keys import LORA_A, LORA_AGG_ERROR_MAX, LORA_AGG_ERROR_MEAN, LORA_B, METRICS


class FedLoRA(FedAvg):
    """Exchange and average (weighted by examples) exactly the trainable tensors.

    The server keeps the full model (frozen backbone + adapters) for central evaluation;
    only ``exchanged_keys`` travel. With both A and B exchanged (``naive``), averaging A and
    B separately is not averaging the update B·A: each round the aggregated train metrics
    carry ``lora-agg-error-mean``/``-max`` over adapted layers,
    ||mean(B)·mean(A) - mean(B·A)|| / ||mean(B·A)|| (Frobenius; means weighted by examples).
    With ``ffa`` (A frozen, only B exchanged) the aggregate is exact and no error is reported.
    """

    def __init__(self, exchanged_keys: Iterable[str], **kwargs) -> None:
        super().__init__(**kwargs)
        self.exchanged_keys = frozenset(exchanged_keys)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        arrays, metrics = super().aggregate_train(server_round, replies)
        ok = [m for m in replies if not m.has_error()]
        if metrics is not None and ok and any(LORA_A in k for k in self.exchanged_keys):
            errors = naive_aggregation_errors(
                [{k: v.numpy() for k, v in m.content[self.arrayrecord_key].items()}
                 for m in ok],
                [float(m.content[METRICS][self.weighted_by_key]) for m in ok],
            )
            metrics[LORA_AGG_ERROR_MEAN] = float(np.mean(errors))
            metrics[LORA_AGG_ERROR_MAX] = float(np.max(errors))
        return arrays, metrics


def naive_aggregation_errors(clients: list[dict[str, np.ndarray]],
                             weights: list[float]) -> list[float]:
    """Per adapted layer: ||mean(B)·mean(A) - mean(B·A)|| / ||mean(B·A)||.

    It runs in torch, on the ServerApp's own threads. numpy's norm of a layer's product is
    a BLAS dot, which OpenBLAS runs on two threads above 10,000 elements (test_vit's qkv:
    12,288); its worker then spins for about 0.1 s of CPU, right when central evaluation
    starts, and on 2 CPUs that made the evaluation about 1.6x slower (measured under
    ``run_simulation``: 170 ms -> 105 ms).
    """
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
