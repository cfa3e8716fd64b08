"""Bandwidth tracking for any message-API strategy: one mixin, exact books.

``configure_*`` measures what the server sends to each node, ``aggregate_*`` what it
receives from each; both are cross-checked against the figures each client's
``bandwidth_mod`` reports inside its reply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import ERROR

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fedvit.wire import (
    BYTES_KEYS,
    METRICS,
    REPORT_KEYS,
    message_bytes,
    message_size,
    tensor_bytes,
    without_keys,
)


@dataclass(frozen=True)
class BookRow:
    """Bytes of one message: one round x phase x node x direction."""

    round: int
    phase: str  # train | evaluate
    node_id: int
    direction: str  # down (server -> client) | up (client -> server)
    tensor_bytes: int
    message_bytes: int  # as sent/received, report included
    report_bytes: int = 0  # of message_bytes: the client's own byte report
    status: str = "ok"  # ok | error (the node replied with an error or not at all)
    detail: str = ""  # for an error: the reason the node gave, or "no reply"
    objects: int = 0  # objects of the message's tree (Flower moves one per HTTP call)


@dataclass
class Books:
    """Every measured message, plus the cross-check failures."""

    rows: list[BookRow] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    def totals(self, server_round: int | None = None, upto: bool = False) -> dict[str, int]:
        """Bytes per direction and level: one round, all rounds up to one, or all."""
        rows = [r for r in self.rows if server_round is None
                or (r.round <= server_round if upto else r.round == server_round)]
        out: dict[str, int] = {}
        for d in ("down", "up"):
            out[f"{d}-tensor"] = sum(r.tensor_bytes for r in rows if r.direction == d)
            out[f"{d}-msg"] = sum(r.message_bytes for r in rows if r.direction == d)
        out["report"] = sum(r.report_bytes for r in rows)
        return out

    def as_dicts(self) -> list[dict]:
        return [dataclasses.asdict(r) for r in self.rows]


def averaged(key: str) -> bool:
    """Whether a reply metric is averaged over nodes: losses and accuracies only."""
    return key.endswith(("-loss", "-accuracy"))


def aggregate_reply_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """The round's aggregate of the replies' metrics: losses and accuracies as Flower's
    examples-weighted mean, byte counters and ``weighted_by_key`` (examples) summed.
    Bookkeeping that means something only per node (``partition-id``, wall-clock
    ``compute-start``/``-end``, ``time-*``, link settings, throughput) is not averaged:
    the strategy keeps it per node (``RoundTiming.timeline``, the books)."""
    means = [RecordDict({METRICS: MetricRecord(
        {k: v for k, v in r[METRICS].items() if averaged(k) or k == weighted_by_key})})
        for r in records]
    agg = aggregate_metricrecords(means, weighted_by_key)
    agg[weighted_by_key] = sum(int(r[METRICS][weighted_by_key]) for r in records)
    for key in BYTES_KEYS:
        if all(key in r[METRICS] for r in records):
            agg[key] = sum(int(r[METRICS][key]) for r in records)
    return agg


class BandwidthTracking:
    """Mixin: ``class TrackedFedAvg(BandwidthTracking, FedAvg)``. Keeps ``self.books``."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("train_metrics_aggr_fn", aggregate_reply_metrics)
        kwargs.setdefault("evaluate_metrics_aggr_fn", aggregate_reply_metrics)
        super().__init__(*args, **kwargs)
        self.books = Books()
        self._sent: dict[tuple[int, str, int], BookRow] = {}
        # The sent messages' metadata, to which the grid writes each message's id on push.
        self._sent_meta: dict[tuple[int, str], list] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._book_sent(server_round, "train", messages)
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        self._book_sent(server_round, "evaluate", messages)
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        self._book_received(server_round, "train", replies)
        return super().aggregate_train(server_round, replies)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        self._book_received(server_round, "evaluate", replies)
        return super().aggregate_evaluate(server_round, replies)

    def _book_sent(self, server_round: int, phase: str, messages: list[Message]) -> None:
        self._sent_meta[(server_round, phase)] = [msg.metadata for msg in messages]
        for msg in messages:
            nbytes, objects = message_size(msg)
            row = BookRow(server_round, phase, msg.metadata.dst_node_id, "down",
                          tensor_bytes(msg.content), nbytes, objects=objects)
            self._sent[(server_round, phase, row.node_id)] = row
            self.books.rows.append(row)

    def _book_received(self, server_round: int, phase: str, replies: list[Message]) -> None:
        # A reply belongs to the node its instruction went to: the SuperLink itself answers
        # for a node that stopped sending heartbeats, with an error from its own node id.
        sent = self._sent_meta.pop((server_round, phase), [])
        to_node = {m.message_id: m.dst_node_id for m in sent}
        answered = set()
        for msg in replies:
            node = to_node.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)
            answered.add(node)
            if msg.has_error() or METRICS not in msg.content.metric_records:
                reason = msg.error.reason if msg.has_error() else "no metrics in reply"
                self.books.rows.append(BookRow(server_round, phase, node, "up", 0,
                                               message_bytes(msg), status="error",
                                               detail=reason[-500:]))
                continue
            full, objects = message_size(msg)
            bare = message_bytes(without_keys(msg, METRICS, REPORT_KEYS))
            row = BookRow(server_round, phase, node, "up", tensor_bytes(msg.content), full,
                          report_bytes=full - bare, objects=objects)
            self.books.rows.append(row)
            self._cross_check(row, bare, msg.content[METRICS])
        for node in dict.fromkeys(m.dst_node_id for m in sent):
            if node not in answered:
                self.books.rows.append(BookRow(server_round, phase, node, "up", 0, 0,
                                               status="error", detail="no reply"))

    def _cross_check(self, up: BookRow, bare_msg: int, report: MetricRecord) -> None:
        down = self._sent.get((up.round, up.phase, up.node_id))
        server_view = {
            "bytes-down-tensor": down.tensor_bytes if down else None,
            "bytes-down-msg": down.message_bytes if down else None,
            "bytes-up-tensor": up.tensor_bytes,
            "bytes-up-msg": bare_msg,
        }
        for key, ours in server_view.items():
            theirs = int(report[key]) if key in report else None
            if ours != theirs:
                text = (f"round {up.round} {up.phase} node {up.node_id}: {key} server "
                        f"{ours} != client {theirs}")
                self.books.mismatches.append(text)
                log(ERROR, "BANDWIDTH BOOKS MISMATCH: %s", text)
