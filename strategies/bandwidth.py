"""Bandwidth books (a wrapper): a row per message measured, cross-checked with the client's
``bandwidth_mod`` report; inner strategies' own messages (``query``) via a ``BookingGrid``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from logging import ERROR
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedvit.keys import BYTES_KEYS, METRICS, REPORT_KEYS
from fedvit.schema import dataclass_row, field_values
from fedvit.wire.measure import message_bytes, message_size, tensor_bytes, without_keys
from strategies.wrapper import StrategyWrapper


@dataclass(frozen=True)
class BookRow:
    """Bytes of one message: one round x phase x node x direction."""

    round: int
    phase: str  # train | evaluate | query
    node_id: int
    direction: str  # down (server -> client) | up (client -> server)
    tensor_bytes: int
    message_bytes: int  # as sent/received, report included
    report_bytes: int = 0  # of message_bytes: the client's own byte report
    status: str = "ok"  # ok | error (the node replied with an error or not at all)
    detail: str = ""  # for an error: the reason the node gave, or "no reply"
    objects: int = 0  # objects of the message's tree (Flower moves one per HTTP call)

    def as_row(self) -> dict[str, Any]:
        """The row of ``books.csv/json`` (columns: ``fedvit.schema.BOOKS``)."""
        return dataclass_row(self)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> BookRow:
        """Inverse of ``as_row`` (a checkpoint's rows)."""
        return cls(**field_values(row, [f.name for f in dataclasses.fields(cls)]))


@dataclass
class Books:
    rows: list[BookRow] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)

    def totals(self, server_round: int | None = None, upto: bool = False) -> dict[str, int]:
        """``{"down-tensor", "down-msg", "up-tensor", "up-msg", "report"}``, bytes, of
        ``server_round`` (``upto``: and every round before; ``None``: all rounds)."""
        rows = [r for r in self.rows if server_round is None
                or (r.round <= server_round if upto else r.round == server_round)]
        out = {f"{d}-{name}": sum(getattr(r, attr) for r in rows if r.direction == d)
               for d in ("down", "up") for name, attr in (("tensor", "tensor_bytes"),
                                                          ("msg", "message_bytes"))}
        return {**out, "report": sum(r.report_bytes for r in rows)}

    def as_rows(self) -> list[dict[str, Any]]:
        return [r.as_row() for r in self.rows]


class BandwidthTracking(StrategyWrapper):
    """Books every message the inner strategy sends and receives in ``self.books``."""

    def __init__(self, strategy: Strategy) -> None:
        super().__init__(strategy)
        self.books = Books()
        self._sent: dict[tuple[int, str, int], BookRow] = {}
        self._sent_meta: dict[tuple[int, str], list[Metadata]] = {}  # ids written on push

    def resume(self, rows: list[BookRow]) -> None:
        """Start the books with a checkpoint's rows."""
        self.books.rows[:] = rows

    def configure(self, phase: str, server_round: int, arrays: ArrayRecord,
                  config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        view = BookingGrid(grid, self, server_round)
        messages = list(super().configure(phase, server_round, arrays, config, view))
        self.book_sent(server_round, phase, messages)
        return messages

    def aggregate(self, phase: str, server_round: int, replies: Iterable[Message]) -> Any:
        replies = list(replies)
        self.book_received(server_round, phase, replies)
        return super().aggregate(phase, server_round, replies)

    def book_sent(self, server_round: int, phase: str, messages: list[Message]) -> None:
        """One ``down`` row per message (train, evaluate or query), before the grid pushes."""
        self._sent_meta[(server_round, phase)] = [msg.metadata for msg in messages]
        for msg in messages:
            nbytes, objects = message_size(msg)
            row = BookRow(server_round, phase, msg.metadata.dst_node_id, "down",
                          tensor_bytes(msg.content), nbytes, objects=objects)
            self._sent[(server_round, phase, row.node_id)] = row
            self.books.rows.append(row)

    def book_received(self, server_round: int, phase: str, replies: list[Message]) -> None:
        """One ``up`` row per node the ``book_sent`` messages went to: its reply
        (cross-checked with the client's report), its error, or ``no reply``."""
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
        ours = (down.tensor_bytes, down.message_bytes) if down else (None, None)
        for key, value in zip(BYTES_KEYS, (*ours, up.tensor_bytes, bare_msg), strict=True):
            theirs = int(report[key]) if key in report else None
            if value != theirs:
                text = (f"round {up.round} {up.phase} node {up.node_id}: {key} server "
                        f"{value} != client {theirs}")
                self.books.mismatches.append(text)
                log(ERROR, "BANDWIDTH BOOKS MISMATCH: %s", text)


class BookingGrid:
    """The grid inside ``BandwidthTracking`` during one configure call, booking what passes in
    that round under the messages' type: only ``get_node_ids`` and ``send_and_receive`` (a
    push or pull would bypass the books)."""

    def __init__(self, grid: Grid, tracker: BandwidthTracking, server_round: int) -> None:
        self._grid, self._tracker, self._round = grid, tracker, server_round

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> list[Message]:
        """Book and send the messages, book and return the replies (ValueError: mixed types)."""
        messages = list(messages)
        phases = {m.metadata.message_type for m in messages}
        if len(phases) > 1:
            raise ValueError(f"one message type per send_and_receive, got {sorted(phases)}")
        if not messages:
            return list(self._grid.send_and_receive(messages, timeout=timeout))
        phase = phases.pop()
        self._tracker.book_sent(self._round, phase, messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self._tracker.book_received(self._round, phase, replies)
        return replies
