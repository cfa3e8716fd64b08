"""Round numbering for a resumed run: the rounds below start after ``offset``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from strategies.wrapper import StrategyWrapper


class RoundOffset(StrategyWrapper):
    """Hands every hook below ``server_round + offset``. Outermost, so every add-on and the
    ``server-round`` FedAvg writes into the messages' config count on from a resumed round.

    Args:
        offset: rounds already done (a resumed run's checkpoint round); 0 for a new run.
    """

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
