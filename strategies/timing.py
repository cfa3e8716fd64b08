"""Round timing (a wrapper): the inner strategy's steps and each reply's report, per round."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedvit.keys import METRICS
from strategies.wrapper import TRAIN, StrategyWrapper


@dataclass
class ClientReport:
    """One ok reply's numeric metrics (``t-*`` stamps included) and the id of the message it
    answers (the grid's push and pull times are keyed by it)."""

    node_id: int
    phase: str
    metrics: dict[str, float]
    reply_to: str = ""


@dataclass
class RoundLog:
    """What the strategy saw of one round; times are the server's ``time.time()``.
    ``server``: (row, start, end) of each configure and aggregation call."""

    start: float = 0.0  # at the round's first configure call
    configure_s: float = 0.0
    aggregate_s: float = 0.0
    clients: list[ClientReport] = field(default_factory=list)
    train_metrics: dict[str, float] = field(default_factory=dict)  # aggregated
    server: list[tuple[str, float, float]] = field(default_factory=list)


class RoundTiming(StrategyWrapper):
    """Times the inner strategy's hooks and keeps each ok reply's report in
    ``self.timeline[round]`` (inside ``BandwidthTracking``: the books' measuring is not timed)."""

    def __init__(self, strategy: Strategy) -> None:
        super().__init__(strategy)
        self.timeline: dict[int, RoundLog] = {}

    def configure(self, phase: str, server_round: int, arrays: ArrayRecord,
                  config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        log, t0 = self._log(server_round), time.time()
        messages = list(super().configure(phase, server_round, arrays, config, grid))
        self._add(log, "configure", t0)
        return messages

    def aggregate(self, phase: str, server_round: int, replies: Iterable[Message]) -> Any:
        replies, log = list(replies), self._log(server_round)
        for msg in replies:
            if not msg.has_error() and METRICS in msg.content.metric_records:
                metrics = {k: float(v) for k, v in msg.content[METRICS].items()
                           if isinstance(v, (int, float))}
                log.clients.append(ClientReport(msg.metadata.src_node_id, phase, metrics,
                                                msg.metadata.reply_to_message_id))
        t0 = time.time()
        out = super().aggregate(phase, server_round, replies)
        self._add(log, "aggregation", t0)
        if phase == TRAIN:
            log.train_metrics = dict(out[1] or {})
        return out

    def _log(self, server_round: int) -> RoundLog:
        return self.timeline.setdefault(server_round, RoundLog(start=time.time()))

    @staticmethod
    def _add(log: RoundLog, row: str, t0: float) -> None:
        t1, attr = time.time(), "configure_s" if row == "configure" else "aggregate_s"
        setattr(log, attr, getattr(log, attr) + t1 - t0)
        log.server.append((row, t0, t1))
