"""What a message weighs, alike on both sides: **tensor bytes** (Σ itemsize × elements of its
arrays) and **message bytes** (every object of its tree as Flower ships it: message, record
dict, records, arrays, 5 MiB chunks, deflated with headers; duplicates counted each time)."""

from __future__ import annotations

import copy

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict


def tensor_bytes(content: RecordDict) -> int:
    return sum(np.dtype(arr.dtype).itemsize * int(np.prod(arr.shape, dtype=np.int64))
               for record in content.array_records.values() for arr in record.values())


def message_size(msg: Message | RecordDict) -> tuple[int, int]:
    """(bytes, objects) of a message's (or content's) serialised tree, one object more for a
    message: Flower 1.41 moves one HTTP call per object (priced in ``fedvit.wire.links``)."""
    if isinstance(msg, Message):
        kids = [msg.content] if msg.has_content() else []
    elif isinstance(msg, (RecordDict, ArrayRecord)):
        kids = list(msg.values())
    elif isinstance(msg, Array):
        kids = [chunk for _, chunk in msg.slice_array()]
    else:
        kids = list((msg.children or {}).values())
    sizes = [message_size(k) for k in kids]
    return len(msg.deflate()) + sum(b for b, _ in sizes), 1 + sum(n for _, n in sizes)


def message_bytes(msg: Message) -> int:
    return message_size(msg)[0]


def without_keys(msg: Message, record: str, keys: tuple[str, ...]) -> Message:
    """A copy of ``msg`` (metadata copied, other records shared) without the metrics
    ``keys`` of its MetricRecord ``record`` (KeyError where it has none)."""
    content = RecordDict(dict(msg.content.items()))
    content[record] = MetricRecord({k: v for k, v in msg.content[record].items() if k not in keys})
    return Message(content=content, metadata=copy.deepcopy(msg.metadata))
