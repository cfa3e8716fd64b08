"""SeededSampling on its own: the sample follows seed, round and partitions (never node
ids), queries go once to each unknown node through the grid it is handed, and the inner
strategy must address every node. The whole-run check is ``simulation/test_resume.py``."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, MessageType
from flwr.serverapp.strategy import FedAvg

from strategies.sampling import SeededSampling, TooFewPartitions
from strategy_fakes import FakeGrid, arrays_of, default_handler

W = {"w": np.zeros(2, np.float32)}
PARTITIONS = [0, 1, 2, 3, 4, 5]


def _sampler(fraction_train: float = 0.5, fraction_evaluate: float = 1.0, seed: int = 42,
             inner: FedAvg | None = None) -> SeededSampling:
    return SeededSampling(inner or FedAvg(min_available_nodes=2, min_train_nodes=2,
                                          min_evaluate_nodes=2),
                          fraction_train=fraction_train, fraction_evaluate=fraction_evaluate,
                          min_nodes=2, seed=seed)


def _grid(node_ids: list[int], **kw) -> FakeGrid:
    return FakeGrid(dict(zip(node_ids, PARTITIONS[:len(node_ids)], strict=True)), **kw)


def _trained(sampler: SeededSampling, grid: FakeGrid, server_round: int) -> list[int]:
    messages = sampler.configure_train(server_round, arrays_of(W), ConfigRecord(), grid)
    return [grid.partitions[m.metadata.dst_node_id] for m in messages]


def test_the_sample_depends_on_seed_round_and_partitions_not_on_node_ids():
    a_ids, b_ids = [101, 7, 55, 9, 1000, 3], [4, 999, 12, 3, 8, 77]
    a, b = _sampler(), _sampler()
    ga, gb = _grid(a_ids), _grid(b_ids)
    rounds = range(1, 9)
    chosen = [_trained(a, ga, r) for r in rounds]
    assert chosen == [_trained(b, gb, r) for r in rounds]
    assert all(len(set(c)) == 3 and c == sorted(c) for c in chosen)  # ordered by partition
    assert len({tuple(c) for c in chosen}) > 1  # and it changes from round to round
    again = _sampler()
    assert [_trained(again, _grid(a_ids), r) for r in rounds] == chosen
    other_seed = _sampler(seed=7)
    assert [_trained(other_seed, _grid(a_ids), r) for r in rounds] != chosen


def test_sample_itself_depends_on_partitions_not_node_ids():
    a, b = _sampler(), _sampler()
    a.partitions, b.partitions = {101: 0, 7: 1, 55: 2, 9: 3}, {3: 3, 12: 2, 999: 1, 4: 0}
    for server_round in (1, 2, 3):
        pa = [a.partitions[n] for n in a.sample(server_round, "train", list(a.partitions), 2)]
        pb = [b.partitions[n] for n in b.sample(server_round, "train", list(b.partitions), 2)]
        assert pa == pb and len(set(pa)) == 2


def test_each_unknown_node_is_queried_once_through_the_grid():
    sampler, grid = _sampler(), _grid([101, 7, 55, 9])
    _trained(sampler, grid, 1)
    queries = grid.of_type(MessageType.QUERY)
    assert sorted(m.metadata.dst_node_id for m in queries) == [7, 9, 55, 101]
    assert all(m.content["config"]["server-round"] == 1 for m in queries)
    assert sampler.partitions == {101: 0, 7: 1, 55: 2, 9: 3}
    _trained(sampler, grid, 2)
    assert len(grid.of_type(MessageType.QUERY)) == 4  # nothing new to ask


def test_sampling_every_node_sends_no_query_and_phase_zero_sends_nothing():
    sampler, grid = _sampler(fraction_train=1.0, fraction_evaluate=0.0), _grid([5, 6, 7])
    assert sorted(_trained(sampler, grid, 1)) == [0, 1, 2]
    assert list(sampler.configure_evaluate(1, arrays_of(W), ConfigRecord(), grid)) == []
    assert grid.sent == []  # configure only builds; no query was needed


def test_too_few_nodes_telling_their_partition_stops_the_round():
    def handler(msg, partition):
        return None if partition > 0 else default_handler(msg, partition)

    with pytest.raises(TooFewPartitions, match="1 of 4 nodes told their partition"):
        _trained(_sampler(), _grid([1, 2, 3, 4], handler=handler), 1)


def test_an_inner_strategy_that_samples_itself_is_refused_when_stacked():
    with pytest.raises(ValueError, match="must address every node"):
        _sampler(inner=FedAvg(fraction_train=0.5))
    with pytest.raises(ValueError, match="'fraction_evaluate': 0.0"):
        _sampler(inner=FedAvg(fraction_evaluate=0.0))
