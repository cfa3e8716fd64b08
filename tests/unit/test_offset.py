"""RoundOffset on its own: every hook below it, and the clients, see the resumed rounds."""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg

from strategies.wrapper import RoundOffset, StrategyWrapper
from strategy_fakes import FakeGrid, arrays_of

W = {"w": np.zeros(2, np.float32)}


class _Rounds(StrategyWrapper):
    """Records the round each hook is called with."""

    def __init__(self, strategy) -> None:
        super().__init__(strategy)
        self.calls: list[tuple[str, int]] = []

    def configure_train(self, server_round, arrays, config, grid):
        self.calls.append(("configure_train", server_round))
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        self.calls.append(("aggregate_train", server_round))
        return super().aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round, arrays, config, grid):
        self.calls.append(("configure_evaluate", server_round))
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        self.calls.append(("aggregate_evaluate", server_round))
        return super().aggregate_evaluate(server_round, replies)


def test_every_hook_and_every_message_gets_the_offset_round():
    rounds = _Rounds(FedAvg(min_available_nodes=2, min_train_nodes=2, min_evaluate_nodes=2))
    offset, grid = RoundOffset(rounds, offset=3), FakeGrid({1: 0, 2: 1})
    train = list(offset.configure_train(1, arrays_of(W), ConfigRecord(), grid))
    offset.aggregate_train(1, grid.send_and_receive(train))
    ev = list(offset.configure_evaluate(2, arrays_of(W), ConfigRecord(), grid))
    offset.aggregate_evaluate(2, grid.send_and_receive(ev))
    assert rounds.calls == [("configure_train", 4), ("aggregate_train", 4),
                            ("configure_evaluate", 5), ("aggregate_evaluate", 5)]
    assert [m.content["config"]["server-round"] for m in train + ev] == [4, 4, 5, 5]


def test_a_new_run_counts_from_one_and_the_offset_can_be_set_later():
    rounds = _Rounds(FedAvg(min_available_nodes=1, min_train_nodes=1))
    offset, grid = RoundOffset(rounds), FakeGrid({1: 0})
    list(offset.configure_train(1, arrays_of(W), ConfigRecord(), grid))
    offset.offset = 7
    list(offset.configure_train(1, arrays_of(W), ConfigRecord(), grid))
    assert rounds.calls == [("configure_train", 1), ("configure_train", 8)]
