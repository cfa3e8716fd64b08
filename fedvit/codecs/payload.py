"""Lossy codecs for the tensors exchanged each round, with exact byte accounting: the encoded
arrays travel as an ``ArrayRecord``'s, so a payload weighs ``Σ arr.nbytes`` (headers, scales,
indices included). The wire format, one tensor to flat 1-D arrays (``encode_tensor``):

Tensor ``K`` of ``n`` elements (C order), blocks of ``aux`` elements, becomes ``K::meta``
uint32 ``[VERSION, CODECS index, DTYPES index, aux, ndim, *shape]`` (``aux``: the block size
for int8/int4, the ``INDEX_ENCODINGS`` index for topk, else 0) and:

- none: ``K::val`` float32[n]; fp16: float16[n] (nearest even; |x| > 65504 becomes ±inf);
  bf16: uint16[n] bfloat16 bit patterns (nearest even).
- int8: ``K::q`` int8[n] in [-127, 127]; int4: ``K::q`` uint8[ceil(n/2)] of q + 8 (q in
  [-7, 7]), element 2i in the low nibble. Both: ``K::scale`` float16[ceil(n/aux)] >=
  max|block| / qmax, rounded *up* so every value fits (error <= scale / 2).
- topk: ``K::val`` float16[k] of the ``k = ceil(fraction × n)`` largest |x| in index order;
  ``K::idx`` the gaps ``idx[i] - idx[i-1] - 1`` (``idx[-1] = -1``) in the narrowest of
  uint8/16/32[k], or a uint8[ceil(n/8)] ``np.packbits`` bitmap if smaller.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord

from fedvit.codecs.spec import CODECS, QMAX, U32_MAX, CodecSpec, topk_count

DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64))
INDEX_ENCODINGS = ("gap-u8", "gap-u16", "gap-u32", "bitmap")
VERSION = 1
SEP = "::"

_GAP_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.uint32))
_PLAIN = {"none": np.dtype(np.float32), "fp16": np.dtype(np.float16), "bf16": np.dtype(np.uint16)}
_HEADER_WORDS = 5  # VERSION, codec, dtype, aux, ndim; then the shape
Parts = dict[str, np.ndarray]


class CodecError(ValueError):
    """A payload that cannot be decoded; the message names the offending key."""


def encode(spec: str | CodecSpec, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{<name>::<part>: 1-D array}``, tensor by tensor in input order, ``::meta`` first.
    ``spec`` may be a bare codec name (default knobs). ValueError: as ``encode_tensor``."""
    spec = (CodecSpec(spec) if isinstance(spec, str) else spec).validate()
    return {k: v for key, t in tensors.items() for k, v in encode_tensor(key, t, spec).items()}


def decode(encoded: dict[str, np.ndarray], restore_dtype: bool = False) -> dict[str, np.ndarray]:
    """``{name: array}`` of an encoded payload (any key order), original shapes, float32
    (or the original dtype). CodecError: a key without ``::`` or a malformed tensor."""
    groups: dict[str, dict[str, np.ndarray]] = {}
    for name, value in encoded.items():
        key, sep, part = name.rpartition(SEP)
        if not sep:
            raise CodecError(f"key {name!r} is not a codec key '<tensor>{SEP}<part>'")
        groups.setdefault(key, {})[part] = np.asarray(value)
    return {key: decode_tensor(key, parts, restore_dtype) for key, parts in groups.items()}


def encoded_bytes(encoded: dict[str, np.ndarray]) -> int:
    return sum(np.asarray(arr).nbytes for arr in encoded.values())


class ErrorFeedback:
    """Residual memory for lossy (top-k) uploads: each round ``c = ef.compensate(x)``, ``d =
    decode(encode(spec, c))``, ``ef.update(c, d)``; the float32 residual ``c - d`` (dropped entries,
    float16 rounding) is what was not delivered, so ``Σ decoded + residual == Σ inputs``."""

    def __init__(self, residual: dict[str, np.ndarray] | None = None) -> None:
        self.residual = {k: np.asarray(v, dtype=np.float32) for k, v in (residual or {}).items()}

    def compensate(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``tensors + residual`` as new float32 arrays; ValueError on a shape mismatch."""
        out = {}
        for key, value in tensors.items():
            x = np.asarray(value, dtype=np.float32)
            r = self.residual.get(key)
            if r is not None and r.shape != x.shape:
                raise ValueError(f"residual {key!r} has shape {r.shape}, tensor {x.shape}")
            out[key] = x + r if r is not None else x.copy()
        return out

    def update(self, sent_input: dict[str, np.ndarray], decoded: dict[str, np.ndarray]) -> None:
        """Residual = what ``compensate`` gave the encoder − what the receiver decoded
        (ValueError when ``decoded`` lacks one of its tensors)."""
        if missing := sorted(set(sent_input) - set(decoded)):
            raise ValueError(f"decoded tensors lack {missing[0]!r}")
        self.residual = {k: np.asarray(v, dtype=np.float32) - np.asarray(decoded[k], np.float32)
                         for k, v in sent_input.items()}

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Float32 copies of the residuals (e.g. for ``context.state``); ``ErrorFeedback`` of them
        restores the memory."""
        return {k: v.copy() for k, v in self.residual.items()}


def is_encoded(keys: Iterable[str]) -> bool:
    return any(k.endswith(SEP + "meta") for k in keys)


def encode_record(spec: CodecSpec, tensors: dict[str, np.ndarray]) -> ArrayRecord:
    """``encode``'s arrays as an ArrayRecord; raises as ``encode``."""
    return ArrayRecord({k: Array.from_numpy_ndarray(np.ascontiguousarray(v))
                        for k, v in encode(spec, tensors).items()})


def record_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """A record's float arrays: decoded (float32) if ``is_encoded``, else as they are."""
    arrays = {k: v.numpy() for k, v in record.items()}
    return decode(arrays) if is_encoded(arrays) else arrays


def encode_tensor(key: str, tensor: np.ndarray, spec: CodecSpec) -> Parts:
    """``{K::meta, K::<part>...}`` of one tensor under a validated spec. ValueError: a dtype not
    in ``DTYPES``, a size or dimension > 2**32 - 1, non-finite int8/int4/topk values, or a
    block max beyond a float16 scale."""
    arr = np.asarray(tensor)
    if arr.dtype not in DTYPES:
        raise ValueError(f"tensor {key!r} has dtype {arr.dtype}; codecs take "
                         f"{[str(d) for d in DTYPES]}")
    if arr.size > U32_MAX or any(d > U32_MAX for d in arr.shape):
        raise ValueError(f"tensor {key!r} of shape {arr.shape} is too large to encode")
    x = np.ascontiguousarray(arr, dtype=np.float32).reshape(-1)
    if spec.name in ("int8", "int4", "topk") and not np.isfinite(x).all():
        raise ValueError(f"tensor {key!r} has non-finite values; {spec.name} needs finite ones")
    aux = spec.block_size if spec.name in QMAX else 0
    if spec.name in ("none", "fp16"):
        parts = {"val": x.astype(_PLAIN[spec.name])}  # a copy, also for float32
    elif spec.name == "bf16":
        bits = x.view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        nan = np.isnan(x)
        rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)  # keep NaN a quiet NaN
        parts = {"val": rounded}
    elif spec.name == "topk":
        parts, aux = _encode_topk(x, spec.topk_fraction)
    else:
        q, scale = _quantise(x, QMAX[spec.name], spec.block_size, spec.name)
        if spec.name == "int4":
            nib = np.full(q.size + q.size % 2, 8, np.uint8)
            nib[: q.size] = (q + 8).astype(np.uint8)
            q = nib[0::2] | (nib[1::2] << 4)
        parts = {"q": q, "scale": scale}
    meta = np.array([VERSION, CODECS.index(spec.name), DTYPES.index(arr.dtype), aux,
                     arr.ndim, *arr.shape], dtype=np.uint32)
    return {key + SEP + "meta": meta, **{key + SEP + p: v for p, v in parts.items()}}


def decode_tensor(key: str, parts: Parts, restore_dtype: bool = False) -> np.ndarray:
    """One tensor, original shape, float32 (or original dtype), from its parts by name (``meta``,
    ``val``, ``q``, ``scale``, ``idx``). CodecError: a missing, extra or malformed part, an
    unknown version, codec, dtype or index encoding, or out-of-range indices."""
    codec, dtype, aux, shape = _read_meta(key, parts)
    n = math.prod(shape)
    expected = _layout(key, codec, aux, n)
    if extra := sorted(set(parts) - set(expected) - {"meta"}):
        raise CodecError(f"unexpected key {key + SEP + extra[0]!r} for codec {codec!r}")
    for part, (want, count) in expected.items():
        name, arr = key + SEP + part, parts.get(part)
        if arr is None:
            raise CodecError(f"missing key {name!r}")
        if arr.dtype != want or arr.ndim != 1:
            raise CodecError(f"{name!r} must be a 1-D {want} array, "
                             f"got {arr.dtype}{list(arr.shape)}")
        if count is not None and arr.size != count:
            raise CodecError(f"{name!r} has {arr.size} elements but the header shape "
                             f"{shape} implies {count} (truncated payload or wrong shape)")
    if codec == "bf16":
        flat = (parts["val"].astype(np.uint32) << 16).view(np.float32)
    elif codec in _PLAIN:
        flat = parts["val"].astype(np.float32)
    elif codec == "topk":
        flat = _decode_topk(key, parts, aux, n)
    else:
        q = parts["q"]
        if codec == "int4":
            q = np.stack([q & 0xF, q >> 4], axis=1).reshape(-1)[:n].astype(np.int8) - 8
        flat = q.astype(np.float32) * np.repeat(parts["scale"].astype(np.float32), aux)[:n]
    return flat.reshape(shape).astype(dtype if restore_dtype else np.float32)


def _quantise(x: np.ndarray, qmax: int, bs: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Block-wise symmetric quantisation: (q int8[n], scale float16[B])."""
    padded = np.zeros(-(-x.size // bs) * bs, np.float64)
    padded[: x.size] = x
    padded = padded.reshape(-1, bs)
    want = np.abs(padded).max(axis=1, initial=0.0) / qmax
    scale = want.astype(np.float16)
    low = scale.astype(np.float64) < want  # round up so that |x| / scale <= qmax
    scale[low] = np.nextafter(scale[low], np.float16(np.inf))
    if not np.isfinite(scale).all():
        raise ValueError(f"{name}: a block's max |x| exceeds what a float16 scale holds "
                         f"({65504 * qmax:g}); use fp32 ('none') for such tensors")
    div = scale.astype(np.float64)
    q = np.rint(padded / np.where(div > 0, div, 1.0)[:, None])
    return np.clip(q, -qmax, qmax).astype(np.int8).reshape(-1)[: x.size], scale


def _encode_topk(x: np.ndarray, fraction: float) -> tuple[Parts, int]:
    """Top-k parts and the index encoding: the smallest, ties to the lower code."""
    n, k = x.size, topk_count(x.size, fraction)
    idx = np.sort(np.argpartition(-np.abs(x), k - 1)[:k]) if 0 < k < n else np.arange(k)
    gaps = np.diff(idx, prepend=-1) - 1
    widest = int(gaps.max(initial=0))
    options = [(k * dt.itemsize, enc, gaps.astype(dt))
               for enc, dt in enumerate(_GAP_DTYPES) if widest <= np.iinfo(dt).max]
    mask = np.zeros(n, bool)
    mask[idx] = True
    options.append((-(-n // 8), INDEX_ENCODINGS.index("bitmap"), np.packbits(mask)))
    _, enc, packed = min(options, key=lambda o: o[:2])
    return {"idx": packed, "val": x[idx].astype(np.float16)}, enc


def _decode_topk(key: str, parts: Parts, aux: int, n: int) -> np.ndarray:
    idx_arr, val = parts["idx"], parts["val"]
    if INDEX_ENCODINGS[aux] == "bitmap":
        idx = np.flatnonzero(np.unpackbits(idx_arr, count=n))
    else:
        idx = np.cumsum(idx_arr.astype(np.int64) + 1) - 1
    if idx.size != val.size:
        raise CodecError(f"{key + SEP + 'idx'!r} gives {idx.size} positions but "
                         f"{key + SEP + 'val'!r} has {val.size} values")
    if idx.size and idx[-1] >= n:
        raise CodecError(f"{key + SEP + 'idx'!r} points at element {idx[-1]} of a tensor "
                         f"with {n} elements")
    out = np.zeros(n, np.float32)
    out[idx] = val.astype(np.float32)
    return out


def _read_meta(key: str, parts: Parts) -> tuple[str, np.dtype, int, tuple[int, ...]]:
    name, meta = key + SEP + "meta", parts.get("meta")
    if meta is None:
        raise CodecError(f"missing key {name!r} (has {sorted(key + SEP + p for p in parts)})")
    if meta.dtype != np.uint32 or meta.ndim != 1 or meta.size < _HEADER_WORDS:
        raise CodecError(f"{name!r} must be uint32[>= {_HEADER_WORDS}], "
                         f"got {meta.dtype}{list(meta.shape)}")
    version, codec, dtype, aux, ndim = (int(v) for v in meta[:_HEADER_WORDS])
    if version != VERSION:
        raise CodecError(f"{name!r}: format version {version}, this decoder reads {VERSION}")
    if codec >= len(CODECS):
        raise CodecError(f"{name!r}: unknown codec tag {codec} (known: {_known(CODECS)})")
    if dtype >= len(DTYPES):
        raise CodecError(f"{name!r}: unknown dtype code {dtype} (known: {_known(DTYPES)})")
    if meta.size != _HEADER_WORDS + ndim:
        raise CodecError(f"{name!r}: header says ndim={ndim} but carries "
                         f"{meta.size - _HEADER_WORDS} dimensions")
    return CODECS[codec], DTYPES[dtype], aux, tuple(int(d) for d in meta[_HEADER_WORDS:])


def _layout(key: str, codec: str, aux: int, n: int) -> dict[str, tuple[np.dtype, int | None]]:
    """Expected {part: (dtype, element count)}; topk's count of values is free (k)."""
    name = key + SEP + "meta"
    if codec in _PLAIN:
        return {"val": (_PLAIN[codec], n)}
    if codec in QMAX:
        if aux < 1 or (codec == "int4" and aux % 2):
            raise CodecError(f"{name!r}: block size {aux} is invalid for {codec}")
        q = (np.dtype(np.int8), n) if codec == "int8" else (np.dtype(np.uint8), -(-n // 2))
        return {"q": q, "scale": (np.dtype(np.float16), -(-n // aux))}
    if aux >= len(INDEX_ENCODINGS):
        raise CodecError(f"{name!r}: unknown topk index encoding {aux} "
                         f"(known: {_known(INDEX_ENCODINGS)})")
    bitmap = INDEX_ENCODINGS[aux] == "bitmap"
    idx = (np.dtype(np.uint8), -(-n // 8)) if bitmap else (_GAP_DTYPES[aux], None)
    return {"idx": idx, "val": (np.dtype(np.float16), None)}


def _known(tags: tuple) -> str:
    return ", ".join(f"{i}={t}" for i, t in enumerate(tags))
