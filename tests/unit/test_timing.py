"""RoundTiming on its own: configure and aggregation intervals, the ok replies' reports,
and the aggregated train metrics, per round."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from flwr.app import ConfigRecord, Error
from flwr.serverapp.strategy import FedAvg

import strategies.timing
from strategies.timing import RoundTiming
from strategies.wrapper import StrategyWrapper
from strategy_fakes import FakeGrid, arrays_of, default_handler, examples, round_trip

W = {"w": np.zeros((2, 2), np.float32)}


class _Slow(StrategyWrapper):
    """Moves the clock ``clock`` by ``seconds`` when it configures and when it aggregates."""

    def __init__(self, strategy, clock: list[float], seconds: float) -> None:
        super().__init__(strategy)
        self.clock, self.seconds = clock, seconds

    def configure_train(self, server_round, arrays, config, grid):
        self.clock[0] += self.seconds
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        self.clock[0] += self.seconds
        return self.strategy.aggregate_train(server_round, replies)


def test_intervals_reports_and_metrics_of_a_round_are_kept(monkeypatch):
    clock = [100.0]  # the round timing's clock: only the inner strategy moves it
    monkeypatch.setattr(strategies.timing, "time", SimpleNamespace(time=lambda: clock[0]))
    timing = RoundTiming(_Slow(FedAvg(min_available_nodes=2, min_train_nodes=2), clock, 2.0))
    messages, replies, (_, metrics) = round_trip(timing, FakeGrid({11: 0, 12: 1}), 3, W)
    log = timing.timeline[3]
    assert list(timing.timeline) == [3]
    assert log.server == [("configure", 100.0, 102.0), ("aggregation", 102.0, 104.0)]
    assert (log.start, log.configure_s, log.aggregate_s) == (100.0, 2.0, 2.0)
    ids = {m.metadata.dst_node_id: m.metadata.message_id for m in messages}
    assert sorted((c.node_id, c.phase, c.reply_to) for c in log.clients) == [
        (11, "train", ids[11]), (12, "train", ids[12])]
    by_node = {c.node_id: c.metrics for c in log.clients}
    assert by_node[12]["num-examples"] == examples(1) and "bytes-up-msg" in by_node[12]
    assert log.train_metrics == dict(metrics) and log.train_metrics["train-loss"] > 0


def test_error_replies_are_timed_but_not_kept_as_reports():
    def handler(msg, partition):
        return Error(code=0, reason="boom") if partition == 0 else default_handler(msg, partition)

    timing = RoundTiming(FedAvg(min_available_nodes=2, min_train_nodes=2))
    round_trip(timing, FakeGrid({11: 0, 12: 1}, handler), 1, W)
    assert [c.node_id for c in timing.timeline[1].clients] == [12]


def test_several_calls_in_a_round_add_up(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(strategies.timing, "time", SimpleNamespace(time=lambda: clock[0]))
    timing = RoundTiming(_Slow(FedAvg(min_available_nodes=1, min_train_nodes=1), clock, 1.5))
    grid = FakeGrid({11: 0})
    for _ in range(2):
        list(timing.configure_train(1, arrays_of(W), ConfigRecord(), grid))
    log = timing.timeline[1]
    assert log.server == [("configure", 0.0, 1.5), ("configure", 1.5, 3.0)]
    assert log.configure_s == 3.0
