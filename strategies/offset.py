"""Round numbering for a resumed run: the rounds below start after ``offset``."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from strategies.wrapper import StrategyWrapper


class RoundOffset(StrategyWrapper):
    """Hands every hook of the inner strategy ``server_round + offset``.

    Placed outermost, so every add-on below it, and the ``server-round`` that FedAvg writes
    into the messages' config (what the clients see), count from the resumed round on.

    Args:
        strategy: the inner strategy.
        offset: rounds already done (a resumed run's checkpoint round); 0 for a new run.
    """

    def __init__(self, strategy: Strategy, offset: int = 0) -> None:
        super().__init__(strategy)
        self.offset = offset

    def resume(self, after_round: int) -> None:
        """Count the rounds on from ``after_round`` (a checkpoint's last round)."""
        self.offset = after_round

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round + self.offset, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round + self.offset, arrays, config,
                                                grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round + self.offset, replies)
