"""RoundTiming on its own: configure and aggregation intervals, the ok replies' reports,
and the aggregated train metrics, per round."""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error
from flwr.serverapp.strategy import FedAvg

from strategies.timing import RoundTiming
from strategies.wrapper import StrategyWrapper
from strategy_fakes import FakeGrid, arrays_of, default_handler, examples, round_trip

W = {"w": np.zeros((2, 2), np.float32)}


class _Slow(StrategyWrapper):
    """Takes ``seconds`` to configure and to aggregate."""

    def __init__(self, strategy, seconds: float) -> None:
        super().__init__(strategy)
        self.seconds = seconds

    def configure_train(self, server_round, arrays, config, grid):
        time.sleep(self.seconds)
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        time.sleep(self.seconds)
        return self.strategy.aggregate_train(server_round, replies)


def test_intervals_reports_and_metrics_of_a_round_are_kept():
    timing = RoundTiming(_Slow(FedAvg(min_available_nodes=2, min_train_nodes=2), 0.02))
    before = time.time()
    messages, replies, (_, metrics) = round_trip(timing, FakeGrid({11: 0, 12: 1}), 3, W)
    log = timing.timeline[3]
    assert list(timing.timeline) == [3]
    assert before <= log.start <= log.server[0][1]
    assert [row for row, _, _ in log.server] == ["configure", "aggregation"]
    for _, t0, t1 in log.server:
        assert 0.02 <= t1 - t0 < 0.5
    assert log.configure_s == log.server[0][2] - log.server[0][1]
    assert log.aggregate_s == log.server[1][2] - log.server[1][1]
    assert log.server[0][2] <= log.server[1][1]  # configure ended before aggregation began
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


def test_several_calls_in_a_round_add_up():
    timing = RoundTiming(_Slow(FedAvg(min_available_nodes=1, min_train_nodes=1), 0.01))
    grid = FakeGrid({11: 0})
    for _ in range(2):
        list(timing.configure_train(1, arrays_of(W), ConfigRecord(), grid))
    log = timing.timeline[1]
    assert len(log.server) == 2
    assert log.configure_s == pytest.approx(sum(t1 - t0 for _, t0, t1 in log.server))
    assert log.configure_s >= 0.02
