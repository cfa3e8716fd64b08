"""FedLoRA: FedAvg over the trainable LoRA adapters and the classifier head only."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

A_KEY, B_KEY = ".lora_A.", ".lora_B."


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
        if metrics is not None and ok and any(A_KEY in k for k in self.exchanged_keys):
            errors = naive_aggregation_errors(
                [{k: v.numpy() for k, v in m.content[self.arrayrecord_key].items()}
                 for m in ok],
                [float(m.content["metrics"][self.weighted_by_key]) for m in ok],
            )
            metrics["lora-agg-error-mean"] = float(np.mean(errors))
            metrics["lora-agg-error-max"] = float(np.max(errors))
        return arrays, metrics


def naive_aggregation_errors(clients: list[dict[str, np.ndarray]],
                             weights: list[float]) -> list[float]:
    """Per adapted layer: ||mean(B)·mean(A) - mean(B·A)|| / ||mean(B·A)||."""
    w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    errors = []
    for a_key in sorted(k for k in clients[0] if A_KEY in k):
        b_key = a_key.replace(A_KEY, B_KEY)
        a = [c[a_key].astype(np.float64) for c in clients]
        b = [c[b_key].astype(np.float64) for c in clients]
        mean_ba = sum(wi * bi @ ai for wi, ai, bi in zip(w, a, b, strict=True))
        naive = sum(wi * bi for wi, bi in zip(w, b, strict=True)) @ sum(
            wi * ai for wi, ai in zip(w, a, strict=True))
        norm = np.linalg.norm(mean_ba)
        errors.append(float(np.linalg.norm(naive - mean_ba) / norm) if norm > 0 else 0.0)
    return errors
