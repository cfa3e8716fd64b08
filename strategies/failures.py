"""Rounds that aggregated nothing: a wrapper stopping the run where every node failed alike
(the next round would too), and the rounds a run's books show empty."""

from __future__ import annotations

import re
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedvit.keys import CONFIG_REFUSED
from strategies.bandwidth import BookRow
from strategies.wrapper import StrategyWrapper

# Flower's error reason of a ClientApp exception: "<class 'X'>:<'message'>"; in simulation
# X is ClientAppException and the message repeats the original after this prefix.
_FLOWER_REASON = re.compile(r"<class '[^']*'>:<'(.*)'>", re.S)
_SIMULATION_PREFIX = "Exception ClientAppException occurred. Message: "


class NodesFailed(RuntimeError):
    """Every node of a train round failed the same way: the run stops."""


def node_error(reason: str) -> str:
    """The ClientApp exception's own message in an ``Error.reason``, without Flower's
    wrapping (``reason`` itself when it is not Flower's form)."""
    match = _FLOWER_REASON.fullmatch(reason.strip())
    text = match.group(1).strip() if match else reason.strip()
    return text.split(_SIMULATION_PREFIX, 1)[-1].strip()


def common_failure(replies: list[Message], sent: int) -> str | None:
    """The first node's error where all ``sent`` train messages got error replies that are
    the same or all refuse the run config (``fedvit.keys.CONFIG_REFUSED``); else None."""
    if not replies or len(replies) < sent or not all(m.has_error() for m in replies):
        return None
    errors = [node_error(m.error.reason) for m in replies]
    same = len(set(errors)) == 1 or all(e.startswith(CONFIG_REFUSED) for e in errors)
    return errors[0] if same else None


def unaggregated_rounds(books: list[BookRow], rejections: list[dict]) -> list[int]:
    """Train rounds, ascending, in which every train reply failed, never came, or was
    rejected (``rejections``: ``{"round", "node-id", "reason"}``)."""
    refused = {(r["round"], r["node-id"]) for r in rejections}
    trained = {r.round for r in books if r.phase == "train"}
    aggregated = {r.round for r in books if r.phase == "train" and r.direction == "up"
                  and r.status == "ok" and (r.round, r.node_id) not in refused}
    return sorted(trained - aggregated)


class StopOnCommonFailure(StrategyWrapper):
    """Raises ``NodesFailed`` after a train round where every node failed alike."""

    def __init__(self, strategy: Strategy) -> None:
        super().__init__(strategy)
        self._sent: dict[int, int] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._sent[server_round] = len(messages)
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        out = self.strategy.aggregate_train(server_round, replies)
        sent = self._sent.pop(server_round, 0)
        if out[0] is None and (failure := common_failure(replies, sent)) is not None:
            raise NodesFailed(f"every node of round {server_round} ({sent} of {sent}) "
                              f"failed the same way: {failure}")
        return out
