"""The packed layout (``pack-tensors``): a message's tensors in one ``Array`` (6 objects where
they fit a 5 MiB chunk, not two per tensor): ``{"packed:" + JSON [[name, dtype.str, shape],
...]: uint8[Σ nbytes]}``, raw C-order bytes, no padding; ``unpack(pack(t))`` is bit-exact."""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

from fedvit.keys import PACKED_PREFIX

ALLOWED_KINDS = "biufc"  # bool, signed/unsigned integers, floats, complex: plain bytes


class PackingError(ValueError):
    """A packed record that cannot be unpacked, or tensors that cannot be packed."""


def _check_dtype(name: str, dtype: np.dtype) -> None:
    if dtype.kind not in ALLOWED_KINDS or dtype.fields is not None:
        raise PackingError(f"tensor {name!r} has dtype {dtype.str}: only bool, integer, "
                           "float and complex tensors are packed")


def is_packed(record: ArrayRecord) -> bool:
    return len(record) == 1 and next(iter(record.keys())).startswith(PACKED_PREFIX)


def pack(tensors: Mapping[str, np.ndarray]) -> ArrayRecord:
    """The packed record of ``tensors`` (in travel order); PackingError: a dtype not packable."""
    arrays = {name: np.asarray(t) for name, t in tensors.items()}
    for name, arr in arrays.items():
        _check_dtype(name, arr.dtype)
    index = [[name, arr.dtype.str, list(arr.shape)] for name, arr in arrays.items()]
    buffer = np.concatenate([np.empty(0, np.uint8)] + [
        np.ascontiguousarray(arr).reshape(-1).view(np.uint8) for arr in arrays.values()])
    key = PACKED_PREFIX + json.dumps(index, separators=(",", ":"))
    return ArrayRecord({key: Array.from_numpy_ndarray(buffer)})


def unpack(record: ArrayRecord) -> dict[str, np.ndarray]:
    """``{name: new writable array}`` in packed order. PackingError: not one packed entry, a buffer
    not 1-D uint8, an index not a JSON list of ``[name, dtype, [dims >= 0]]`` with unique names
    and packable dtypes, or sizes not adding up to the buffer's."""
    if not is_packed(record):
        raise PackingError(f"not a packed record: {len(record)} entries "
                           f"{[k[:40] for k in list(record.keys())[:3]]}; expected one "
                           f"entry whose key starts with {PACKED_PREFIX!r}")
    key, array = next(iter(record.items()))
    buffer = array.numpy()
    if buffer.dtype != np.uint8 or buffer.ndim != 1:
        raise PackingError(f"packed buffer has dtype {buffer.dtype} and shape {buffer.shape}; "
                           "expected 1-D uint8")
    entries = _index(key[len(PACKED_PREFIX):])
    counts = [int(np.prod(shape, dtype=np.int64)) for _, _, shape in entries]
    total = sum(dtype.itemsize * n for (_, dtype, _), n in zip(entries, counts, strict=True))
    if total != buffer.size:
        raise PackingError(f"packed index describes {total} bytes of {len(entries)} tensors, "
                           f"but the buffer holds {buffer.size}")
    out, offset = {}, 0
    for (name, dtype, shape), count in zip(entries, counts, strict=True):
        out[name] = np.frombuffer(buffer, dtype, count, offset).reshape(shape).copy()
        offset += count * dtype.itemsize
    return out


def unpack_record(record: ArrayRecord) -> ArrayRecord:
    return ArrayRecord({k: Array.from_numpy_ndarray(v) for k, v in unpack(record).items()})


def pack_record(record: ArrayRecord) -> ArrayRecord:
    return pack({k: v.numpy() for k, v in record.items()})


def _index(text: str) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
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
        _check_dtype(name, dtype)
        entries.append((name, dtype, tuple(shape)))
    return entries
