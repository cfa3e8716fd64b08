"""A run that did no work is not "complete": the strategy add-on that
stops where every node failed a round the same way, the status a summary gives rounds that
aggregated nothing, and the client-side refusal of a ``val-fraction`` that empties a
partition's train split. The whole run: ``simulation/test_no_work.py``."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Error
from flwr.serverapp.strategy import FedAvg

from fedvit.config.appconfig import ConfigError
from fedvit.data.partitions import check_val_split
from fedvit.keys import CONFIG_REFUSED
from server_app.summary import run_status
from strategies.bandwidth import BookRow, Books
from strategies.failures import NodesFailed, StopOnCommonFailure, node_error
from strategy_fakes import FakeGrid, default_handler, round_trip

TENSORS = {"w": np.zeros(3, np.float32)}
SIMULATION = ("<class 'flwr.clientapp.client_app.ClientAppException'>:<'\nException "
              "ClientAppException occurred. Message: {}'>")
DEPLOYMENT = "<class 'fedvit.config.appconfig.ConfigError'>:<'{}'>"


def _failing(reason_of):
    return lambda msg, partition: Error(code=2, reason=reason_of(partition))


def test_every_node_refusing_the_config_stops_the_run_with_its_reason():
    grid = FakeGrid({11: 0, 12: 1}, _failing(lambda p: SIMULATION.format(
        f"{CONFIG_REFUSED} 'val-fraction' = 0.999 is not allowed: partition {p} of 2")))
    with pytest.raises(NodesFailed) as info:
        round_trip(StopOnCommonFailure(FedAvg()), grid, 1, TENSORS)
    assert str(info.value) in (f"every node of round 1 (2 of 2) failed the same way: "
                               f"{CONFIG_REFUSED} 'val-fraction' = 0.999 is not allowed: "
                               f"partition {p} of 2" for p in (0, 1))  # the first reply's


def test_the_same_error_everywhere_stops_the_run():
    grid = FakeGrid({11: 0, 12: 1}, _failing(lambda p: DEPLOYMENT.format("CUDA out of memory")))
    with pytest.raises(NodesFailed, match="failed the same way: CUDA out of memory$"):
        round_trip(StopOnCommonFailure(FedAvg()), grid, 3, TENSORS)


def test_different_errors_or_one_good_node_go_on():
    strategy = StopOnCommonFailure(FedAvg())
    differ = FakeGrid({11: 0, 12: 1}, _failing(lambda p: f"node {p} broke"))
    assert round_trip(strategy, differ, 1, TENSORS)[2][0] is None  # nothing, but no stop
    one_good = FakeGrid({11: 0, 12: 1}, lambda msg, p: (
        default_handler(msg, p) if p else Error(code=2, reason="broke")))
    assert round_trip(strategy, one_good, 2, TENSORS)[2][0] is not None


def test_node_error_unwraps_flowers_reason_in_both_forms():
    assert node_error(SIMULATION.format("boom")) == "boom"
    assert node_error(DEPLOYMENT.format("boom")) == "boom"
    assert node_error("no reply") == "no reply"


def _books(ok_rounds: list[int], failed_rounds: list[int]) -> Books:
    rows = []
    for r in sorted(ok_rounds + failed_rounds):
        rows.append(BookRow(r, "train", 1, "down", 10, 20))
        rows.append(BookRow(r, "train", 1, "up", 10, 20) if r in ok_rounds else
                    BookRow(r, "train", 1, "up", 0, 5, status="error", detail="boom"))
    return Books(rows)


def test_a_finished_run_with_rounds_that_aggregated_nothing_is_not_complete():
    none = run_status(None, _books([], [1, 2]), [])
    assert none["status"] == "nothing-aggregated" and none["unaggregated-rounds"] == [1, 2]
    assert none["stop-reason"].startswith("rounds [1, 2] aggregated no update")
    some = run_status(None, _books([1], [2]), [])
    assert some["status"] == "rounds-not-aggregated" and some["unaggregated-rounds"] == [2]
    rejected = run_status(None, _books([1, 2], []), [{"round": 2, "node-id": 1,
                                                      "reason": "NaN"}])
    assert rejected["status"] == "rounds-not-aggregated"
    assert run_status(None, _books([1, 2], []), []) == {
        "status": "complete", "stop-reason": "", "unaggregated-rounds": []}
    late = run_status(NodesFailed("every node of round 2"), _books([1], [2]), [])
    assert late["status"] == "nodes-failed" and late["stop-reason"] == "every node of round 2"
    first = run_status(NodesFailed("every node of round 1"), _books([], [1]), [])
    assert first["status"] == "nothing-aggregated"


def test_val_fraction_that_leaves_nothing_to_train_on_names_the_key():
    with pytest.raises(ConfigError) as info:
        check_val_split(0.999, 359, 0, 2)
    assert str(info.value) == (
        "'val-fraction' = 0.999 is not allowed: partition 0 of 2 holds 359 examples, which "
        "leaves none to train on; must be a number in (0, 1) that leaves at least one "
        "example on each side, here at most 0.9972")
    check_val_split(0.9972, 359, 0, 2)  # the bound it names works
    check_val_split(0.5, 2, 0, 2)
    with pytest.raises(ConfigError):
        check_val_split(0.6, 2, 1, 2)
