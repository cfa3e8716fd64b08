"""What a message weighs on the wire, measured the same way on both sides.

Two levels:

* **tensor bytes**: the raw tensor payload, Σ itemsize × elements over every array in the
  message's ArrayRecords (what the bandwidth estimate multiplies out);
* **message bytes**: the whole message serialised as Flower ships it, i.e. every object of
  its tree (message, record dict, records, arrays, 5 MiB chunks) deflated with its header.
  Identical objects are counted each time they occur, so the figure is deterministic and
  does not depend on which chunks a given link happened to deduplicate.
"""

from __future__ import annotations

import copy

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict


def tensor_bytes(content: RecordDict) -> int:
    """The raw tensor payload of a message's content.

    Args:
        content: the message's records.

    Returns:
        Bytes: Σ itemsize × number of elements over all arrays of all ArrayRecords.
    """
    return sum(
        np.dtype(arr.dtype).itemsize * int(np.prod(arr.shape, dtype=np.int64))
        for record in content.array_records.values()
        for arr in record.values()
    )


def message_bytes(msg: Message) -> int:
    """Serialised size of the whole message tree, headers included, duplicates counted.

    Args:
        msg: a Flower message.

    Returns:
        Bytes.
    """
    return _tree_size(msg)[0]


def message_size(msg: Message) -> tuple[int, int]:
    """Serialised size and object count of the whole message tree, duplicates counted:
    Flower 1.41 moves a message as one HTTP request or response per object
    (``fedvit.wire.links`` prices that).

    Args:
        msg: a Flower message.

    Returns:
        (bytes, objects).
    """
    return _tree_size(msg)


def content_bytes(content: RecordDict) -> int:
    """Serialised size of a message's content (all of the message but its metadata).

    Args:
        content: the message's records.

    Returns:
        Bytes, headers included, duplicates counted.
    """
    return _tree_size(content)[0]


def content_size(content: RecordDict) -> tuple[int, int]:
    """Serialised size and object count of a message's content: a message carrying it
    has one object more (the message itself), ``message_size``.

    Args:
        content: the message's records.

    Returns:
        (bytes, objects), headers included, duplicates counted.
    """
    return _tree_size(content)


def _tree_size(obj) -> tuple[int, int]:
    if isinstance(obj, Message):
        kids = [obj.content] if obj.has_content() else []
    elif isinstance(obj, (RecordDict, ArrayRecord)):
        kids = list(obj.values())
    elif isinstance(obj, Array):
        kids = [chunk for _, chunk in obj.slice_array()]
    else:
        kids = list((obj.children or {}).values())
    sizes = [_tree_size(k) for k in kids]
    return (len(obj.deflate()) + sum(b for b, _ in sizes), 1 + sum(n for _, n in sizes))


def without_keys(msg: Message, record: str, keys: tuple[str, ...]) -> Message:
    """A copy of a message without some metrics (e.g. to size it as it was before they
    were added).

    Args:
        msg: a Flower message with a MetricRecord ``record``.
        record: the MetricRecord's name.
        keys: the metrics to leave out.

    Returns:
        A new message, same metadata (copied), the other records shared.

    Raises:
        KeyError: ``msg`` has no record ``record``.
    """
    content = RecordDict(dict(msg.content.items()))
    content[record] = MetricRecord({k: v for k, v in msg.content[record].items()
                                     if k not in keys})
    return Message(content=content, metadata=copy.deepcopy(msg.metadata))
