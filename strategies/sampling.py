"""Seeded node sampling: a round's sample depends on ``seed``, the round and the partitions,
never on node ids (Flower draws them at random). A node is asked its partition (``query``)."""

from __future__ import annotations

import random
from collections.abc import Iterable
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedvit.keys import CONFIG, METRICS, PARTITION_ID, SERVER_ROUND
from strategies.wrapper import EVALUATE, TRAIN, StrategyWrapper

QUERY_PHASE = MessageType.QUERY


class TooFewPartitions(RuntimeError):
    """Fewer nodes with a known partition than a round must sample."""


class SeededSampling(StrategyWrapper):
    """Chooses each round's nodes with ``random.Random(f"{seed}:{phase}:{round}")`` over the
    nodes ordered by partition (``self.partitions``: node id -> partition), dropping the inner
    strategy's messages to the others (a fraction 0: off; ``query_timeout_s`` None: no limit).
    ValueError where the inner strategy samples itself (a fraction other than 1.0)."""

    def __init__(self, strategy: Strategy, *, fraction_train: float, fraction_evaluate: float,
                 min_nodes: int, seed: int, query_timeout_s: float | None = None) -> None:
        super().__init__(strategy)
        own = {k: getattr(strategy, k, 1.0) for k in ("fraction_train", "fraction_evaluate")}
        if own != dict.fromkeys(own, 1.0):
            raise ValueError(f"the strategy below seeded sampling must address every node it "
                             f"is offered (fractions 1.0), not {own}")
        self.fractions = {TRAIN: fraction_train, EVALUATE: fraction_evaluate}
        self.min_nodes, self.seed, self.query_timeout_s = min_nodes, seed, query_timeout_s
        self.partitions: dict[int, int] = {}

    def summary(self) -> None:
        log(INFO, "\t├──> Seeded sampling (seed %d): fraction train %.2f | evaluate %.2f, at "
            "least %d nodes (the strategy below addresses every node)", self.seed,
            self.fractions[TRAIN], self.fractions[EVALUATE], self.min_nodes)
        self.strategy.summary()

    def sample(self, server_round: int, phase: str, node_ids: list[int], size: int) -> list[int]:
        """``size`` of ``node_ids``: the same partitions for the same seed, phase and round."""
        ordered = sorted(node_ids, key=lambda n: (self.partitions[n], n))
        rng = random.Random(f"{self.seed}:{phase}:{server_round}")
        return [ordered[i] for i in sorted(rng.sample(range(len(ordered)), size))]

    def configure(self, phase: str, server_round: int, arrays: ArrayRecord,
                  config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        if self.fractions[phase] == 0.0:
            return []  # this phase is off
        messages = list(super().configure(phase, server_round, arrays, config, grid))
        ids = sorted(m.metadata.dst_node_id for m in messages)
        size = max(int(len(ids) * self.fractions[phase]), self.min_nodes)
        if size >= len(ids):  # every node: nothing to choose
            return messages
        self._learn_partitions(server_round, ids, grid)
        known = [n for n in ids if n in self.partitions]
        if len(known) < size:
            raise TooFewPartitions(
                f"round {server_round} {phase}: {len(known)} of {len(ids)} nodes told their "
                f"partition, fewer than the {size} to sample")
        chosen = self.sample(server_round, phase, known, size)
        log(INFO, "fedvit: round %d %s: sampled partitions %s (seed %d)", server_round, phase,
            [self.partitions[n] for n in chosen], self.seed)
        to = {m.metadata.dst_node_id: m for m in messages}
        return [to[n] for n in chosen]

    def _learn_partitions(self, server_round: int, ids: list[int], grid: Grid) -> None:
        """Ask the nodes whose partition is not known yet (one ``query`` message each)."""
        unknown = [n for n in ids if n not in self.partitions]
        if not unknown:
            return
        record = RecordDict({CONFIG: ConfigRecord({SERVER_ROUND: server_round})})
        messages = [Message(content=record, message_type=QUERY_PHASE, dst_node_id=node)
                    for node in unknown]
        replies = list(grid.send_and_receive(messages, timeout=self.query_timeout_s))
        to_node = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}  # set on push
        for reply in replies:
            node = to_node.get(reply.metadata.reply_to_message_id)
            if node is None or reply.has_error() or METRICS not in reply.content.metric_records:
                log(WARNING, "fedvit: node %s did not tell its partition: %s", node,
                    reply.error.reason if reply.has_error() else "no metrics")
                continue
            self.partitions[node] = int(reply.content[METRICS][PARTITION_ID])
