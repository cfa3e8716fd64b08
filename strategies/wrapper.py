"""The base of every strategy add-on, in the style of Flower's DP wrappers: it holds a
``Strategy`` and delegates; an add-on overrides ``configure``/``aggregate`` (both phases,
``phase`` a ``MessageType``) or single hooks. ``RoundOffset`` numbers a resumed run's rounds."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

TRAIN, EVALUATE = MessageType.TRAIN, MessageType.EVALUATE


class StrategyWrapper(Strategy):
    def __init__(self, strategy: Strategy) -> None:
        super().__init__()
        self.strategy = strategy

    def configure(self, phase: str, server_round: int, arrays: ArrayRecord,
                  config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        hook = (self.strategy.configure_train if phase == TRAIN
                else self.strategy.configure_evaluate)
        return hook(server_round, arrays, config, grid)

    def aggregate(self, phase: str, server_round: int, replies: Iterable[Message]) -> Any:
        """Train gives (ArrayRecord | None, MetricRecord | None), evaluate MetricRecord | None."""
        hook = (self.strategy.aggregate_train if phase == TRAIN
                else self.strategy.aggregate_evaluate)
        return hook(server_round, replies)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.configure(TRAIN, server_round, arrays, config, grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord,
                           config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self.configure(EVALUATE, server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.aggregate(TRAIN, server_round, replies)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        return self.aggregate(EVALUATE, server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()


class RoundOffset(StrategyWrapper):
    """Hands every hook below ``server_round + offset`` (rounds already done). Outermost,
    so every add-on and FedAvg's ``server-round`` in the config count on after a resume."""

    def __init__(self, strategy: Strategy, offset: int = 0) -> None:
        super().__init__(strategy)
        self.offset = offset

    def resume(self, after_round: int) -> None:
        """Count the rounds on from ``after_round`` (a checkpoint's last round)."""
        self.offset = after_round

    def configure(self, phase: str, server_round: int, arrays: ArrayRecord,
                  config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return super().configure(phase, server_round + self.offset, arrays, config, grid)

    def aggregate(self, phase: str, server_round: int, replies: Iterable[Message]) -> Any:
        return super().aggregate(phase, server_round + self.offset, replies)
