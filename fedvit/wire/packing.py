"""The packed layout of exchanged tensors: one ArrayRecord entry per message instead of one
per tensor (run-config key ``pack-tensors``).

Flower 1.41 moves a message one object per HTTP call: the message, its record dict, each
record, each ``Array`` and each of its 5 MiB chunks (``fedvit.wire.links``). Laid out one
``Array`` per tensor, a message costs two objects per tensor; packed, every tensor of the
message travels in **one** ``Array``, a flat ``uint8`` buffer holding each tensor's raw
bytes (C order, its own dtype and byte order) one after another, without padding. The
index that turns the buffer back into tensors is the entry's key, so it travels inside the
ArrayRecord object and costs no object of its own::

    ArrayRecord({"packed:" + JSON [[name, dtype, shape], ...]: Array(uint8[Σ nbytes])})

``dtype`` is numpy's ``dtype.str`` (e.g. ``"<f4"``; the bf16 codec's bit patterns travel
as ``"<u2"``), ``shape`` a list of ints; each tensor's offset is the sum of the sizes
before it. So a packed message's tensor bytes (``fedvit.wire.measure.tensor_bytes``: Σ itemsize ×
elements) equal the unpacked one's exactly, and the index counts as message bytes only.
Packing is lossless: ``unpack(pack(t))`` gives every tensor back bit for bit, same name,
order, dtype and shape.

Objects of a message whose tensors fit in one chunk: the message, its record dict, its
config or metrics record, the ArrayRecord, one Array and one chunk: 6, whatever the
number of tensors (``fedvit.wire.measure.message_size`` counts them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

from fedvit.keys import PACKED_PREFIX

ALLOWED_KINDS = "biufc"  # bool, signed/unsigned integers, floats, complex: plain bytes


class PackingError(ValueError):
    """A packed record that cannot be unpacked, or tensors that cannot be packed; the
    message names what is wrong."""


def is_packed(record: ArrayRecord) -> bool:
    """Whether a record is in the packed layout.

    Args:
        record: an ArrayRecord of a message.

    Returns:
        True when its only key starts with ``fedvit.keys.PACKED_PREFIX``.
    """
    return len(record) == 1 and next(iter(record.keys())).startswith(PACKED_PREFIX)


def pack(tensors: Mapping[str, np.ndarray]) -> ArrayRecord:
    """The packed record of ``tensors`` (module docstring).

    Args:
        tensors: ``{name: array}`` in the order they travel; any shape, any dtype of
            kind bool, integer, float or complex.

    Returns:
        An ArrayRecord with one entry: key ``PACKED_PREFIX`` + the JSON index, value a
        1-D uint8 Array of Σ nbytes bytes.

    Raises:
        PackingError: a tensor of another dtype (object, string, structured, ...).
    """
    arrays = {name: np.asarray(t) for name, t in tensors.items()}
    for name, arr in arrays.items():
        if arr.dtype.kind not in ALLOWED_KINDS or arr.dtype.fields is not None:
            raise PackingError(f"tensor {name!r} has dtype {arr.dtype}: only bool, integer, "
                               "float and complex tensors can be packed")
    index = [[name, arr.dtype.str, list(arr.shape)] for name, arr in arrays.items()]
    buffer = np.empty(sum(arr.nbytes for arr in arrays.values()), np.uint8)
    offset = 0
    for arr in arrays.values():
        raw = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
        buffer[offset:offset + raw.size] = raw
        offset += raw.size
    key = PACKED_PREFIX + json.dumps(index, separators=(",", ":"))
    return ArrayRecord({key: Array.from_numpy_ndarray(buffer)})


def unpack(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The tensors of a packed record, checked against its index.

    Args:
        record: what ``pack`` returned (after the wire).

    Returns:
        ``{name: array}`` in the packed order: new, writable, aligned arrays of the
        index's dtypes and shapes.

    Raises:
        PackingError: not one packed entry, a buffer that is not 1-D uint8, an index that
            is not a JSON list of ``[name, dtype, shape]`` (unique names, dtypes of kind
            bool/integer/float/complex, shapes of ints >= 0), or an index whose sizes do
            not add up to the buffer's length.
    """
    if not is_packed(record):
        raise PackingError(f"not a packed record: {len(record)} entries "
                           f"{[k[:40] for k in list(record.keys())[:3]]}; expected one "
                           f"entry whose key starts with {PACKED_PREFIX!r}")
    key, array = next(iter(record.items()))
    buffer = array.numpy()
    if buffer.dtype != np.uint8 or buffer.ndim != 1:
        raise PackingError(f"packed buffer has dtype {buffer.dtype} and shape "
                           f"{buffer.shape}; expected 1-D uint8")
    entries = _index(key[len(PACKED_PREFIX):])
    total = sum(dtype.itemsize * int(np.prod(shape, dtype=np.int64))
                for _, dtype, shape in entries)
    if total != buffer.size:
        raise PackingError(f"packed index describes {total} bytes of {len(entries)} tensors, "
                           f"but the buffer holds {buffer.size}")
    out, offset = {}, 0
    for name, dtype, shape in entries:
        count = int(np.prod(shape, dtype=np.int64))
        out[name] = np.frombuffer(buffer, dtype, count, offset).reshape(shape).copy()
        offset += count * dtype.itemsize
    return out


def unpack_record(record: ArrayRecord) -> ArrayRecord:
    """``unpack`` as an ArrayRecord, one Array per tensor (what an unpacked message holds).

    Raises:
        PackingError: as ``unpack``.
    """
    return ArrayRecord({k: Array.from_numpy_ndarray(v) for k, v in unpack(record).items()})


def pack_record(record: ArrayRecord) -> ArrayRecord:
    """``pack`` of an ArrayRecord's tensors.

    Raises:
        PackingError: as ``pack``.
    """
    return pack({k: v.numpy() for k, v in record.items()})


def _index(text: str) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    """The parsed, checked index (``unpack``'s rules)."""
    try:
        raw = json.loads(text)
    except ValueError as err:
        raise PackingError(f"packed index is not JSON: {err}") from err
    if not isinstance(raw, list):
        raise PackingError(f"packed index is a {type(raw).__name__}, expected a list")
    entries, seen = [], set()
    for i, entry in enumerate(raw):
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                and isinstance(entry[1], str) and isinstance(entry[2], list)
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                        for d in entry[2])):
            raise PackingError(f"packed index entry {i} is {str(entry)[:80]}; expected "
                               "[name, dtype, [dims >= 0]]")
        name, dtype_text, shape = entry
        if name in seen:
            raise PackingError(f"packed index names tensor {name!r} twice")
        seen.add(name)
        try:
            dtype = np.dtype(dtype_text)
        except (TypeError, ValueError) as err:
            raise PackingError(f"tensor {name!r} has dtype {dtype_text!r}, which numpy "
                               "does not know") from err
        if dtype.kind not in ALLOWED_KINDS or dtype.fields is not None:
            raise PackingError(f"tensor {name!r} has dtype {dtype_text!r}: only bool, "
                               "integer, float and complex tensors are packed")
        entries.append((name, dtype, tuple(shape)))
    return entries
