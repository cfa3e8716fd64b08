"""Round numbering for a resumed run: the rounds below start after ``offset``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from strategies.wrapper import StrategyWrapper


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
