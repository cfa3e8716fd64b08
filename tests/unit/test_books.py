"""BandwidthTracking on its own: exact rows per message, the cross-check against the client
mod's report, errors and missing replies, and messages sent through its grid view."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ConfigRecord, Error, Message, MessageType, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedvit.keys import METRICS
from strategies.bandwidth import BandwidthTracking, BookingGrid
from strategies.factory import aggregate_reply_metrics
from strategies.wrapper import StrategyWrapper
from strategy_fakes import FakeGrid, arrays_of, default_handler, round_trip

W = {"w": np.zeros((3, 4), np.float32)}  # 48 tensor bytes


def _books(nodes: int = 2) -> BandwidthTracking:
    return BandwidthTracking(FedAvg(min_available_nodes=nodes, min_train_nodes=nodes,
                                    train_metrics_aggr_fn=aggregate_reply_metrics))


def test_every_message_is_booked_with_the_figures_the_client_reported():
    books = _books()
    _, replies, (_, metrics) = round_trip(books, FakeGrid({101: 0, 7: 1}), 1, W)
    rows = books.books.rows
    assert [(r.round, r.phase, r.direction) for r in rows] == (
        [(1, "train", "down")] * 2 + [(1, "train", "up")] * 2)
    assert sorted(r.node_id for r in rows if r.direction == "up") == [7, 101]
    assert all(r.tensor_bytes == 48 and r.status == "ok" and r.objects > 0 for r in rows)
    by_node = {r.metadata.src_node_id: r.content[METRICS] for r in replies}
    for row in rows:
        report = by_node[row.node_id]
        if row.direction == "down":
            assert (row.message_bytes, row.report_bytes) == (report["bytes-down-msg"], 0)
        else:  # as received, the client's report included; without it, what it measured
            assert row.report_bytes > 0
            assert row.message_bytes - row.report_bytes == report["bytes-up-msg"]
    assert books.books.mismatches == []
    totals = books.books.totals(1)
    assert (totals["down-tensor"], totals["up-tensor"]) == (96, 96)
    assert totals["down-msg"] == metrics["bytes-down-msg"]  # the summed client reports
    assert books.books.totals(2) == dict.fromkeys(totals, 0)


def test_a_report_that_differs_is_recorded_as_a_mismatch():
    books = _books()
    grid = FakeGrid({101: 0, 7: 1})
    messages = list(books.configure_train(3, arrays_of(W), ConfigRecord(), grid))
    replies = grid.send_and_receive(messages)
    tampered = next(r for r in replies if r.metadata.src_node_id == 7)
    tampered.content[METRICS]["bytes-up-tensor"] = 47
    books.aggregate_train(3, replies)
    assert books.books.mismatches == ["round 3 train node 7: bytes-up-tensor server 48 != "
                                      "client 47"]


def test_error_replies_and_missing_replies_are_booked_as_errors():
    def handler(msg: Message, partition: int):
        if partition == 1:
            return Error(code=0, reason="out of memory")
        if partition == 2:
            return None  # the node never answers
        return default_handler(msg, partition)

    books = _books(nodes=3)
    round_trip(books, FakeGrid({5: 0, 6: 1, 8: 2}, handler), 1, W)
    up = {r.node_id: r for r in books.books.rows if r.direction == "up"}
    assert (up[5].status, up[5].tensor_bytes) == ("ok", 48)
    assert (up[6].status, up[6].detail, up[6].tensor_bytes) == ("error", "out of memory", 0)
    assert up[6].message_bytes > 0
    assert (up[8].status, up[8].detail, up[8].message_bytes) == ("error", "no reply", 0)
    assert books.books.mismatches == []


class _Asks(StrategyWrapper):
    """An inner strategy that asks every node a query through the grid it is handed."""

    def configure_train(self, server_round, arrays, config, grid) -> Iterable[Message]:
        record = RecordDict({"config": ConfigRecord({"server-round": server_round})})
        grid.send_and_receive([Message(record, dst_node_id=n, message_type=MessageType.QUERY)
                               for n in sorted(grid.get_node_ids())])
        return self.strategy.configure_train(server_round, arrays, config, grid)


def test_messages_the_inner_strategy_sends_itself_are_booked_under_their_type():
    books = BandwidthTracking(_Asks(FedAvg(min_available_nodes=2, min_train_nodes=2)))
    round_trip(books, FakeGrid({101: 0, 7: 1}), 4, W)
    query = [r for r in books.books.rows if r.phase == "query"]
    assert sorted((r.round, r.node_id, r.direction, r.tensor_bytes, r.status)
                  for r in query) == [(4, 7, "down", 0, "ok"), (4, 7, "up", 0, "ok"),
                                      (4, 101, "down", 0, "ok"), (4, 101, "up", 0, "ok")]
    assert all(r.message_bytes > 0 for r in query) and books.books.mismatches == []
    assert sum(r.phase == "train" for r in books.books.rows) == 4


def test_the_grid_view_offers_no_unbooked_way_to_send():
    view = BookingGrid(FakeGrid({1: 0}), _books(), 1)
    assert view.get_node_ids() == [1]
    for unbooked in ("push_messages", "pull_messages"):
        assert not hasattr(view, unbooked)
