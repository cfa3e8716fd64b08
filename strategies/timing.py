"""Round timing for any message-API strategy: the strategy's own steps, and each reply's
client report (compute interval, phases, link), kept per round."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from fedvit.wire import METRICS


@dataclass
class ClientReport:
    """One ok reply's timing-relevant metrics (``fedvit.stamps``), and the id of the
    message it answers (the grid's push and pull times are keyed by it)."""

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


class RoundTiming:
    """Mixin: ``self.timeline[round]`` is a ``RoundLog``. Place it after
    ``BandwidthTracking`` so the books' own measuring is not counted as aggregation."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.timeline: dict[int, RoundLog] = {}

    def _log(self, server_round: int) -> RoundLog:
        if server_round not in self.timeline:
            self.timeline[server_round] = RoundLog(start=time.time())
        return self.timeline[server_round]

    def _timed(self, server_round: int, attr: str, call):
        """Run ``call()``, adding its seconds to the round's ``attr`` and its interval to
        the round's server intervals."""
        log = self._log(server_round)
        t0 = time.time()
        out = call()
        t1 = time.time()
        setattr(log, attr, getattr(log, attr) + t1 - t0)
        log.server.append((_ROWS[attr], t0, t1))
        return out

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        sup = super().configure_train
        return self._timed(server_round, "configure_s",
                           lambda: list(sup(server_round, arrays, config, grid)))

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        sup = super().configure_evaluate
        return self._timed(server_round, "configure_s",
                           lambda: list(sup(server_round, arrays, config, grid)))

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        self._keep(server_round, "train", replies)
        sup = super().aggregate_train
        out = self._timed(server_round, "aggregate_s", lambda: sup(server_round, replies))
        self._log(server_round).train_metrics = dict(out[1] or {})
        return out

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        self._keep(server_round, "evaluate", replies)
        sup = super().aggregate_evaluate
        return self._timed(server_round, "aggregate_s", lambda: sup(server_round, replies))

    def _keep(self, server_round: int, phase: str, replies: list[Message]) -> None:
        log = self._log(server_round)
        for msg in replies:
            if msg.has_error() or METRICS not in msg.content.metric_records:
                continue
            metrics = {k: float(v) for k, v in msg.content[METRICS].items()
                       if isinstance(v, (int, float))}
            log.clients.append(ClientReport(msg.metadata.src_node_id, phase, metrics,
                                            msg.metadata.reply_to_message_id))
