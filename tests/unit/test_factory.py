"""build_strategy: one stack in one order, the server's interface, and a whole run of it
through Flower's own ``Strategy.start`` on a fake grid (no Ray)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from flwr.app import ConfigRecord, MetricRecord
from flwr.serverapp.strategy import FedAvg

import strategies.bandwidth
import strategies.timing
from fedvit.config.appconfig import AppConfig
from strategies import BookRow, FedLoRA, build_strategy
from strategies.bandwidth import BandwidthTracking
from strategies.exchange import ExchangeCodecs
from strategies.failures import StopOnCommonFailure
from strategies.sampling import SeededSampling
from strategies.timing import RoundTiming
from strategies.wrapper import RoundOffset
from strategy_fakes import FakeGrid, arrays_of, examples, shifted

W = {"w": np.zeros((2, 3), np.float32)}


def _cfg(**run_config) -> AppConfig:
    return AppConfig.from_run_config({"strategy": "fedavg", "min-nodes": 2, **run_config})


def _layers(strategy) -> list:
    out, layer = [], strategy.strategy
    while True:
        out.append(layer)
        if not hasattr(layer, "strategy"):
            return out
        layer = layer.strategy


def test_the_stack_is_offset_failures_books_timing_codecs_sampling_then_the_base():
    layers = _layers(build_strategy(_cfg(**{"fraction-train": 0.5, "codec-up": "int8"}),
                                    W.keys()))
    assert [type(x) for x in layers] == [RoundOffset, StopOnCommonFailure, BandwidthTracking,
                                         RoundTiming, ExchangeCodecs, SeededSampling, FedAvg]
    codecs, sampling, base = layers[4], layers[5], layers[6]
    assert (codecs.codec_up.name, codecs.codec_down.name) == ("int8", "none")
    assert (sampling.fractions["train"], sampling.seed) == (0.5, 42)
    assert (base.fraction_train, base.fraction_evaluate) == (1.0, 1.0)  # the sampler chooses
    lora = _layers(build_strategy(_cfg(strategy="fedlora"), ["a.lora_B.w"]))[-1]
    assert isinstance(lora, FedLoRA) and lora.exchanged_keys == {"a.lora_B.w"}


def test_a_run_through_start_books_queries_times_rounds_and_aggregates():
    strategy = build_strategy(_cfg(**{"fraction-train": 0.5, "fraction-evaluate": 0.0}),
                              W.keys())
    grid = FakeGrid({50: 3, 40: 2, 30: 1, 20: 0})
    central: list[int] = []
    result = strategy.start(grid=grid, initial_arrays=arrays_of(W), num_rounds=2,
                            train_config=ConfigRecord(), evaluate_config=ConfigRecord(),
                            evaluate_fn=lambda r, a: central.append(r) or MetricRecord())
    assert central == [0, 1, 2]
    books = strategy.books
    query = [r for r in books.rows if r.phase == "query"]
    assert sorted((r.round, r.direction, r.tensor_bytes) for r in query) == (
        [(1, "down", 0)] * 4 + [(1, "up", 0)] * 4)  # asked once, in the first round
    train = [r for r in books.rows if r.phase == "train"]
    assert [sum(r.round == n for r in train) for n in (1, 2)] == [4, 4]  # 2 nodes x 2 ways
    assert all(r.tensor_bytes == 24 for r in train) and books.mismatches == []
    assert sorted(strategy.timeline) == [1, 2] and strategy.rejections == []
    expected = W["w"]
    for n in (1, 2):
        log = strategy.timeline[n]
        assert len(log.clients) == 2 and log.train_metrics["bytes-up-tensor"] == 48
        parts = [int(c.metrics["partition-id"]) for c in log.clients]
        expected = sum(examples(p) * shifted(p)(expected) for p in parts) / sum(
            examples(p) for p in parts)
    assert np.allclose(result.arrays["w"].numpy(), expected)  # both rounds aggregated


def test_resume_sets_the_rounds_books_and_rejections_of_the_checkpoint():
    strategy = build_strategy(_cfg(), W.keys())
    old = [BookRow(2, "train", 20, "down", 24, 900)]
    rejected = [{"round": 1, "node-id": 30, "reason": "x"}]
    strategy.resume(2, old, rejected)
    grid = FakeGrid({20: 0, 30: 1})
    messages = list(strategy.configure_train(1, arrays_of(W), ConfigRecord(), grid))
    assert [m.content["config"]["server-round"] for m in messages] == [3, 3]
    assert strategy.books.rows[0] == old[0]
    assert [r.round for r in strategy.books.rows[1:]] == [3, 3]
    assert list(strategy.timeline) == [3] and strategy.rejections == rejected
    replies = grid.send_and_receive(messages)
    arrays, _ = strategy.aggregate_train(1, replies)
    expected = (10 * shifted(0)(W["w"]) + 20 * shifted(1)(W["w"])) / 30
    assert np.allclose(arrays["w"].numpy(), expected)
    assert {r.round for r in strategy.books.rows if r.direction == "up"} == {3}


def test_the_books_measuring_is_not_counted_as_configure_or_aggregation(monkeypatch):
    # The round timing reads a clock that only the books' measuring moves: one tick each.
    clock, measure = [0.0], strategies.bandwidth.message_size

    def ticking_measure(msg):
        clock[0] += 1.0
        return measure(msg)

    monkeypatch.setattr(strategies.timing, "time", SimpleNamespace(time=lambda: clock[0]))
    monkeypatch.setattr(strategies.bandwidth, "message_size", ticking_measure)
    strategy = build_strategy(_cfg(), W.keys())
    grid = FakeGrid({20: 0, 30: 1})
    messages = list(strategy.configure_train(1, arrays_of(W), ConfigRecord(), grid))
    strategy.aggregate_train(1, grid.send_and_receive(messages))
    assert clock[0] == 4.0  # four messages measured
    log = strategy.timeline[1]
    assert (log.configure_s, log.aggregate_s) == (0.0, 0.0)
    assert len(strategy.books.rows) == 4
