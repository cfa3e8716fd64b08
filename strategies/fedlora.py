"""FedLoRA: FedAvg over the trainable LoRA adapters and the classifier head only."""

from __future__ import annotations

from collections.abc import Iterable
from logging import WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg


class FedLoRA(FedAvg):
    """Exchange and average (weighted by examples) exactly the trainable tensors.

    The server keeps the full model (frozen backbone + adapters) for central evaluation;
    only ``exchanged_keys`` travel. A reply carrying any other key set is rejected with a
    logged reason and left out of the average.
    """

    def __init__(self, exchanged_keys: Iterable[str], **kwargs) -> None:
        super().__init__(**kwargs)
        self.exchanged_keys = frozenset(exchanged_keys)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if set(arrays) != self.exchanged_keys:
            raise ValueError("FedLoRA must be started with the trainable tensors only")
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        kept = []
        for msg in replies:
            keys = set() if msg.has_error() else set(msg.content[self.arrayrecord_key])
            if msg.has_error() or keys == self.exchanged_keys:
                kept.append(msg)
                continue
            log(WARNING, "round %d: rejected reply of node %d: it carries %d tensors, "
                "%d of them not exchanged, %d exchanged ones missing", server_round,
                msg.metadata.src_node_id, len(keys), len(keys - self.exchanged_keys),
                len(self.exchanged_keys - keys))
        return super().aggregate_train(server_round, kept)
