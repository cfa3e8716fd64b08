"""Rounds that aggregated nothing: a wrapper that stops the run where every node failed the
same way (the next round would fail again), and the rounds a run's books show empty."""

from __future__ import annotations

import re
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedvit.keys import CONFIG_REFUSED
from strategies.books import BookRow
from strategies.wrapper import StrategyWrapper

# Flower's error reason of an exception in a ClientApp: "<class 'X'>:<'message'>", where in
# simulation X is ClientAppException and message repeats the original one after a prefix.
_FLOWER_REASON = re.compile(r"<class '[^']*'>:<'(.*)'>", re.S)
_SIMULATION_PREFIX = "Exception ClientAppException occurred. Message: "


class NodesFailed(RuntimeError):
    """Every node of a train round failed the same way: the run stops instead of
    repeating the round."""


def node_error(reason: str) -> str:
    """The message a ClientApp's exception gave, without Flower's wrapping.

    Args:
        reason: ``Error.reason`` of a reply (deployment or simulation form).

    Returns:
        The exception's own message (``reason`` itself when it is not Flower's form).
    """
    match = _FLOWER_REASON.fullmatch(reason.strip())
    text = match.group(1).strip() if match else reason.strip()
    return text.split(_SIMULATION_PREFIX, 1)[-1].strip()


def common_failure(replies: list[Message], sent: int) -> str | None:
    """The failure every node of a round shares, if they share one.

    Args:
        replies: a round's train replies.
        sent: how many train messages the round sent.

    Returns:
        The first node's error where every node sent replied with an error and the errors
        are the same or all refuse the run config (``fedvit.keys.CONFIG_REFUSED``); else
        None.
    """
    if not replies or len(replies) < sent or not all(m.has_error() for m in replies):
        return None
    errors = [node_error(m.error.reason) for m in replies]
    if len(set(errors)) == 1 or all(e.startswith(CONFIG_REFUSED) for e in errors):
        return errors[0]
    return None


def unaggregated_rounds(books: list[BookRow], rejections: list[dict]) -> list[int]:
    """Train rounds in which no reply was aggregated: every train reply failed, never came,
    or was rejected.

    Args:
        books: the run's book rows.
        rejections: the rejected train replies (``{"round", "node-id", "reason"}``).

    Returns:
        The rounds, ascending.
    """
    refused = {(r["round"], r["node-id"]) for r in rejections}
    trained = {r.round for r in books if r.phase == "train"}
    aggregated = {r.round for r in books if r.phase == "train" and r.direction == "up"
                  and r.status == "ok" and (r.round, r.node_id) not in refused}
    return sorted(trained - aggregated)


class StopOnCommonFailure(StrategyWrapper):
    """Raises ``NodesFailed`` after a train round that aggregated nothing because every
    node failed the same way (``common_failure``).

    Args:
        strategy: the inner strategy.
    """

    def __init__(self, strategy: Strategy) -> None:
        super().__init__(strategy)
        self._sent: dict[int, int] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._sent[server_round] = len(messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        out = self.strategy.aggregate_train(server_round, replies)
        sent = self._sent.pop(server_round, 0)
        if out[0] is None and (failure := common_failure(replies, sent)) is not None:
            raise NodesFailed(f"every node of round {server_round} ({sent} of {sent}) "
                              f"failed the same way: {failure}")
        return out
