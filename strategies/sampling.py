"""Seeded node sampling: a round's sample depends on ``seed``, the round and the partitions
the connected nodes hold, never on node ids (which Flower draws at random) or on Flower's
unseeded ``random.sample``.

Which partition a node holds is known only to the node (its node config). When a round
must choose among the nodes (a fraction below 1), the strategy first asks every node it
does not know yet with one small ``query`` message; the reply carries ``partition-id``.
Those messages are measured and booked like any other (phase ``query``), so the books stay
exact. A run that samples every node sends no query.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedvit.wire import METRICS

QUERY_PHASE = "query"


class TooFewPartitions(RuntimeError):
    """Fewer nodes with a known partition than a round must sample."""


class _OnlyNodes:
    """A Grid view that offers only ``node_ids`` (in that order) for sampling."""

    def __init__(self, grid: Grid, node_ids: list[int]) -> None:
        self._grid, self._ids = grid, node_ids

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def get_node_ids(self) -> list[int]:
        return list(self._ids)


class SeededSampling:
    """Mixin, placed right above ``FedAvg``/``FedLoRA``: ``configure_train`` and
    ``configure_evaluate`` sample with ``random.Random(f"{seed}:{phase}:{round}")`` over the
    nodes ordered by partition; FedAvg then builds the messages for exactly that sample.
    ``self.partitions`` maps node id -> partition id."""

    def __init__(self, *args, seed: int, query_timeout_s: float | None = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seed, self.query_timeout_s = seed, query_timeout_s
        self.partitions: dict[int, int] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        sup = super().configure_train
        return self._seeded(server_round, "train", "fraction_train", self.min_train_nodes,
                            grid, lambda g: sup(server_round, arrays, config, g))

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        sup = super().configure_evaluate
        return self._seeded(server_round, "evaluate", "fraction_evaluate",
                            self.min_evaluate_nodes, grid,
                            lambda g: sup(server_round, arrays, config, g))

    def sample(self, server_round: int, phase: str, node_ids: list[int],
               size: int) -> list[int]:
        """``size`` of ``node_ids`` (all with a known partition), ordered by partition;
        the same partitions for the same seed, phase and round."""
        ordered = sorted(node_ids, key=lambda n: (self.partitions[n], n))
        rng = random.Random(f"{self.seed}:{phase}:{server_round}")
        chosen = rng.sample(range(len(ordered)), size)
        return [ordered[i] for i in sorted(chosen)]

    def _seeded(self, server_round: int, phase: str, fraction_attr: str, min_nodes: int,
                grid: Grid, configure: Callable[[Grid], Iterable[Message]]) -> list[Message]:
        fraction = getattr(self, fraction_attr)
        if fraction == 0.0:
            return list(configure(grid))  # FedAvg sends nothing
        ids = sorted(grid.get_node_ids())
        size = max(int(len(ids) * fraction), min_nodes)
        if size >= len(ids):  # every node: nothing to choose
            return list(configure(grid))
        self._learn_partitions(server_round, ids, grid)
        known = [n for n in ids if n in self.partitions]
        if len(known) < max(size, self.min_available_nodes):
            raise TooFewPartitions(
                f"round {server_round} {phase}: {len(known)} of {len(ids)} nodes told their "
                f"partition, fewer than the {size} to sample")
        chosen = self.sample(server_round, phase, known, size)
        log(INFO, "fedvit: round %d %s: sampled partitions %s (seed %d)", server_round, phase,
            [self.partitions[n] for n in chosen], self.seed)
        with _set(self, fraction_attr, 1.0):  # FedAvg takes exactly the view's nodes
            messages = list(configure(_OnlyNodes(grid, chosen)))
        rank = {n: i for i, n in enumerate(chosen)}
        return sorted(messages, key=lambda m: rank[m.metadata.dst_node_id])

    def _learn_partitions(self, server_round: int, ids: list[int], grid: Grid) -> None:
        """Ask the nodes whose partition is not known yet (one booked message each)."""
        unknown = [n for n in ids if n not in self.partitions]
        if not unknown:
            return
        record = RecordDict({"config": ConfigRecord({"server-round": server_round})})
        messages = list(self._construct_messages(record, unknown, MessageType.QUERY))
        book_sent = getattr(self, "_book_sent", None)
        if book_sent:
            book_sent(server_round, QUERY_PHASE, messages)
        replies = list(grid.send_and_receive(messages, timeout=self.query_timeout_s))
        book_received = getattr(self, "_book_received", None)
        if book_received:
            book_received(server_round, QUERY_PHASE, replies)
        to_node = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        for reply in replies:
            node = to_node.get(reply.metadata.reply_to_message_id)
            if node is None or reply.has_error() or METRICS not in reply.content.metric_records:
                log(WARNING, "fedvit: node %s did not tell its partition: %s", node,
                    reply.error.reason if reply.has_error() else "no metrics")
                continue
            self.partitions[node] = int(reply.content[METRICS]["partition-id"])


@contextmanager
def _set(obj: object, attr: str, value: object):
    saved = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, saved)
