"""Round timing for any message-API strategy (a wrapper): the inner strategy's own steps,
and each reply's client report (compute interval, phases, link), kept per round."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedvit.keys import METRICS
from strategies.wrapper import StrategyWrapper

T = TypeVar("T")


@dataclass
class ClientReport:
    """One ok reply's timing-relevant metrics (its ``t-*`` stamps, ``fedvit.keys``), and the
    id of the message it answers (the grid's push and pull times are keyed by it)."""

    node_id: int
    phase: str
    metrics: dict[str, float]
    reply_to: str = ""


@dataclass
class RoundLog:
    """What the strategy saw of one round. Times are the server's wall clock
    (``time.time()``); ``server`` holds (row, start, end) of each configure and aggregation
    call."""

    start: float = 0.0  # wall clock at the round's first configure call
    configure_s: float = 0.0
    aggregate_s: float = 0.0
    clients: list[ClientReport] = field(default_factory=list)
    train_metrics: dict[str, float] = field(default_factory=dict)  # aggregated
    server: list[tuple[str, float, float]] = field(default_factory=list)


_ROWS = {"configure_s": "configure", "aggregate_s": "aggregation"}


class RoundTiming(StrategyWrapper):
    """Times the inner strategy's hooks and keeps each ok reply's report, per round, in
    ``self.timeline[round]`` (a ``RoundLog``).

    Place it inside ``BandwidthTracking``, so the books' own measuring is not counted as
    configure or aggregation time.

    Args:
        strategy: the inner strategy.
    """

    def __init__(self, strategy: Strategy) -> None:
        super().__init__(strategy)
        self.timeline: dict[int, RoundLog] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        inner = self.strategy.configure_train
        return self._timed(server_round, "configure_s",
                           lambda: list(inner(server_round, arrays, config, grid)))

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        inner = self.strategy.configure_evaluate
        return self._timed(server_round, "configure_s",
                           lambda: list(inner(server_round, arrays, config, grid)))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self._keep(server_round, MessageType.TRAIN, replies)
        inner = self.strategy.aggregate_train
        out = self._timed(server_round, "aggregate_s", lambda: inner(server_round, replies))
        self._log(server_round).train_metrics = dict(out[1] or {})
        return out

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        self._keep(server_round, MessageType.EVALUATE, replies)
        inner = self.strategy.aggregate_evaluate
        return self._timed(server_round, "aggregate_s", lambda: inner(server_round, replies))

    def _log(self, server_round: int) -> RoundLog:
        if server_round not in self.timeline:
            self.timeline[server_round] = RoundLog(start=time.time())
        return self.timeline[server_round]

    def _timed(self, server_round: int, attr: str, call: Callable[[], T]) -> T:
        """Run ``call()``, adding its seconds to the round's ``attr`` and its interval to
        the round's server intervals."""
        log = self._log(server_round)
        t0 = time.time()
        out = call()
        t1 = time.time()
        setattr(log, attr, getattr(log, attr) + t1 - t0)
        log.server.append((_ROWS[attr], t0, t1))
        return out

    def _keep(self, server_round: int, phase: str, replies: list[Message]) -> None:
        log = self._log(server_round)
        for msg in replies:
            if msg.has_error() or METRICS not in msg.content.metric_records:
                continue
            metrics = {k: float(v) for k, v in msg.content[METRICS].items()
                       if isinstance(v, (int, float))}
            log.clients.append(ClientReport(msg.metadata.src_node_id, phase, metrics,
                                            msg.metadata.reply_to_message_id))
