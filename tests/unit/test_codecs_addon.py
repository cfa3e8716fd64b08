"""ExchangeCodecs on its own: encoded down, decoded and checked up, a bad reply rejected
and left out of the aggregate, and the inner strategy handed replies in partition order."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedvit.codecs.payload import CodecSpec, encode_record, is_encoded
from fedvit.keys import METRICS
from strategies.exchange import ExchangeCodecs
from strategies.wrapper import StrategyWrapper
from strategy_fakes import FakeGrid, arrays_of, default_handler, numpy_of, round_trip, shifted

W = {"w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)}


def _codecs(inner, down: str = "none", up: str = "none", pack: bool = False
            ) -> ExchangeCodecs:
    return ExchangeCodecs(inner, CodecSpec.parse(down), CodecSpec.parse(up), "arrays", pack)


def _fedavg(nodes: int) -> FedAvg:
    return FedAvg(min_available_nodes=nodes, min_train_nodes=nodes)


class _Seen(StrategyWrapper):
    """Records the partitions (None for an error) of the replies it is handed."""

    def __init__(self, strategy) -> None:
        super().__init__(strategy)
        self.seen: list[int | None] = []

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.seen = [None if r.has_error() else int(r.content[METRICS]["partition-id"])
                     for r in replies]
        return self.strategy.aggregate_train(server_round, replies)


def test_a_rejected_reply_leaves_the_aggregate_as_without_it():
    def handler(msg, partition):
        content = default_handler(msg, partition)
        if partition == 2:
            content["arrays"] = arrays_of({"w": np.full((3, 4), np.nan, np.float32)})
        return content

    codecs = _codecs(_fedavg(3))
    grid = FakeGrid({30: 0, 31: 1, 32: 2}, handler)
    _, _, (arrays, metrics) = round_trip(codecs, grid, 5, W)
    assert codecs.rejections == [{"round": 5, "node-id": 32,
                                  "reason": "tensor 'w' holds NaN or Inf"}]
    _, _, (without, _) = round_trip(_codecs(_fedavg(2)), FakeGrid({30: 0, 31: 1}), 5, W)
    assert np.array_equal(arrays["w"].numpy(), without["w"].numpy())
    assert np.allclose(arrays["w"].numpy(), W["w"] + (10 * 1 + 20 * 2) / 30)
    assert metrics["train-loss"] == pytest.approx((10 * 1.0 + 20 * 2.0) / 30)  # not 3.0


@pytest.mark.parametrize("wrong,reason", [
    ({"w": np.zeros((4, 3), np.float32)}, "shape (4, 3)"),
    ({"w": np.zeros((3, 4), np.float64)}, "dtype float64"),
    ({"v": np.zeros((3, 4), np.float32)}, "1 tensors missing ['w']"),
])
def test_replies_of_the_wrong_form_are_rejected_with_the_reason(wrong, reason):
    def handler(msg, partition):
        content = default_handler(msg, partition)
        if partition == 1:
            content["arrays"] = arrays_of(wrong)
        return content

    codecs = _codecs(_fedavg(2))
    _, _, (arrays, _) = round_trip(codecs, FakeGrid({1: 0, 2: 1}, handler), 1, W)
    assert [r["node-id"] for r in codecs.rejections] == [2]
    assert reason in codecs.rejections[0]["reason"]
    assert np.array_equal(arrays["w"].numpy(), shifted(0)(W["w"]))  # node 1's alone


def test_the_inner_strategy_gets_replies_in_partition_order_errors_last():
    def handler(msg, partition):
        return Error(code=0, reason="x") if partition == 1 else default_handler(msg, partition)

    seen = _Seen(_fedavg(3))
    codecs = _codecs(seen)
    grid = FakeGrid({9: 2, 4: 1, 7: 0}, handler)
    messages = list(codecs.configure_train(1, arrays_of(W), ConfigRecord(), grid))
    replies = grid.send_and_receive(messages)
    codecs.aggregate_train(1, list(reversed(replies)))
    assert seen.seen == [0, 2, None]


def test_down_is_encoded_and_an_encoded_update_comes_back_decoded():
    def handler(msg, partition):
        received = numpy_of(msg.content["arrays"])
        update = {k: shifted(partition)(v) - v for k, v in received.items()}
        return RecordDict({"arrays": encode_record(CodecSpec.parse("int8"), update),
                           METRICS: MetricRecord({"num-examples": 10, "partition-id": partition})})

    codecs = _codecs(_fedavg(2), down="bf16", up="int8")
    grid = FakeGrid({1: 0, 2: 1}, handler)
    messages, _, (arrays, _) = round_trip(codecs, grid, 1, W)
    assert all(is_encoded(m.content["arrays"].keys()) for m in messages)
    assert codecs.rejections == []
    assert arrays["w"].numpy().dtype == np.float32
    assert np.allclose(arrays["w"].numpy(), W["w"] + 1.5, atol=0.02)  # mean of +1 and +2
    ev = list(codecs.configure_evaluate(1, arrays_of(W), ConfigRecord(), grid))
    assert ev and all(is_encoded(m.content["arrays"].keys()) for m in ev)


def test_a_plain_reply_is_rejected_when_the_uplink_is_encoded():
    codecs = _codecs(_fedavg(2), up="int8")
    _, _, (arrays, _) = round_trip(codecs, FakeGrid({1: 0, 2: 1}), 1, W)
    assert arrays is None  # nothing left to aggregate
    assert [r["reason"] for r in codecs.rejections] == [
        "payload is not encoded, but codec-up is 'int8'"] * 2
