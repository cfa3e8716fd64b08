"""A fake Grid whose nodes answer through the app's real client mod, and small helpers to
drive strategy add-ons without Ray (the way Flower's own strategy tests use mock replies)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from client_app.mods import bandwidth_mod, packing_mod
from fedvit.codecs.payload import record_arrays
from fedvit.keys import METRICS

# A node's answer to one message: the reply's content, an Error, or None (no reply).
Handler = Callable[[Message, int], RecordDict | Error | None]


def arrays_of(tensors: dict[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord of numpy tensors."""
    return ArrayRecord({k: Array.from_numpy_ndarray(v) for k, v in tensors.items()})


def numpy_of(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The tensors of an ArrayRecord (decoded if encoded)."""
    return record_arrays(record)


def examples(partition: int) -> int:
    """The examples a partition trains on in these tests: 10, 20, 30, ..."""
    return 10 * (partition + 1)


def shifted(partition: int) -> Callable[[np.ndarray], np.ndarray]:
    """How a node trains in these tests: every tensor + (partition + 1)."""
    return lambda x: (x + np.float32(partition + 1)).astype(x.dtype)


def default_handler(msg: Message, partition: int) -> RecordDict:
    """Query: the partition. Train: the received tensors shifted by the partition, and
    metrics. Evaluate: metrics."""
    metrics = {"partition-id": partition, "num-examples": examples(partition)}
    if msg.metadata.message_type == MessageType.QUERY:
        return RecordDict({METRICS: MetricRecord({"partition-id": partition})})
    if msg.metadata.message_type == MessageType.EVALUATE:
        return RecordDict({METRICS: MetricRecord({**metrics, "eval-loss": 0.5})})
    sent = numpy_of(msg.content["arrays"])
    trained = {k: shifted(partition)(v) for k, v in sent.items()}
    return RecordDict({"arrays": arrays_of(trained),
                       METRICS: MetricRecord({**metrics, "train-loss": 1.0 + partition})})


class FakeGrid:
    """Nodes ``{node_id: partition}``; each message is answered at once by ``handler``
    through ``client_app.mods.bandwidth_mod`` and ``packing_mod`` (so replies carry the real
    byte report, in the layout the message came in).

    ``sent`` holds every message pushed, in order, with the id this grid gave it.
    """

    def __init__(self, partitions: dict[int, int], handler: Handler = default_handler) -> None:
        self.partitions, self.handler = dict(partitions), handler
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.partitions)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = f"m{len(self.sent)}"  # as a grid's push
            self.sent.append(msg)
            reply = self._answer(msg)
            if reply is not None:
                replies.append(reply)
        return replies

    def _answer(self, msg: Message) -> Message | None:
        node = msg.metadata.dst_node_id
        partition = self.partitions[node]
        context = Context(run_id=1, node_id=node, state=RecordDict(), run_config={},
                          node_config={"partition-id": partition,
                                       "num-partitions": len(self.partitions)})
        answers: list[RecordDict | Error | None] = []

        def handle(m: Message, _: Context) -> Message:
            answers.append(self.handler(m, partition))
            out = answers[-1]
            if isinstance(out, Error):
                return Message(out, reply_to=m)
            return Message(out if out is not None else RecordDict(), reply_to=m)

        reply = bandwidth_mod(msg, context, lambda m, c: packing_mod(m, c, handle))
        return None if answers[-1] is None else reply

    def of_type(self, message_type: str) -> list[Message]:
        """The messages pushed of one type."""
        return [m for m in self.sent if m.metadata.message_type == message_type]


def round_trip(strategy, grid: FakeGrid, server_round: int, tensors: dict[str, np.ndarray],
               config: ConfigRecord | None = None):
    """Configure one train round, send it through ``grid``, aggregate the replies.

    Returns:
        (messages, replies, aggregate) where aggregate is ``aggregate_train``'s pair.
    """
    messages = list(strategy.configure_train(server_round, arrays_of(tensors),
                                             config or ConfigRecord(), grid))
    replies = grid.send_and_receive(messages)
    return messages, replies, strategy.aggregate_train(server_round, replies)
