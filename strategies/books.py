"""The bandwidth books: one row per message measured, and the cross-check failures."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedvit.schema import dataclass_row, field_values


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
    """Every measured message, plus the cross-check failures."""

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
        """Every row of ``books.csv/json``, in the order measured."""
        return [r.as_row() for r in self.rows]
