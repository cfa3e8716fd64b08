"""The codecs' wire format: one tensor to its flat arrays (``encode_tensor``) and back
(``decode_tensor``). ``fedvit.codecs.payload`` applies them to whole payloads.

Wire format: for every tensor ``K`` (in input order) the keys below, all 1-D arrays.

``K::meta``  uint32 ``[VERSION, codec, dtype, aux, ndim, *shape]`` (4 × (5 + ndim) bytes);
             ``codec`` is the index into ``fedvit.codecs.spec.CODECS``, ``dtype`` the
             original dtype (:data:`DTYPES`), ``aux`` the block size (int8/int4), the
             index encoding (topk, :data:`INDEX_ENCODINGS`), else 0.

Then, with ``n`` = number of elements and ``B = ceil(n / block)`` blocks of consecutive
elements of the C-order flattened tensor (the last one possibly shorter):

========  ===========================================================================
none      ``K::val`` float32[n]
fp16      ``K::val`` float16[n] (round to nearest even; |x| > 65504 becomes ±inf)
bf16      ``K::val`` uint16[n], bfloat16 bit patterns (round to nearest even)
int8      ``K::q`` int8[n] in [-127, 127]; ``K::scale`` float16[B], ≥ max|block| / 127
int4      ``K::q`` uint8[ceil(n/2)]: q + 8 (q in [-7, 7]), element 2i in the low nibble
          and 2i+1 in the high one; ``K::scale`` float16[B], ≥ max|block| / 7
topk      ``K::val`` float16[k], ``k = ceil(fraction × n)`` largest |x| in index order;
          ``K::idx`` either the gaps ``idx[i] - idx[i-1] - 1`` (``idx[-1] = -1``) as
          uint8/uint16/uint32[k], the narrowest that holds the largest gap, or a
          uint8[ceil(n/8)] bitmap (``np.packbits``), whichever is smallest
========  ===========================================================================

Block scales are rounded *up* to float16, so every quantised value fits and the error per
element is at most ``scale / 2``. Decoding reconstructs ``q × scale`` (int8/int4) and zeros
outside the top-k. Anything malformed (missing/extra keys, wrong dtypes or element counts,
unknown version/codec/dtype tags, out-of-range indices) raises :class:`CodecError`.
"""

from __future__ import annotations

import math

import numpy as np

from fedvit.codecs.spec import CODECS, QMAX, U32_MAX, CodecSpec, topk_count

DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64))
INDEX_ENCODINGS = ("gap-u8", "gap-u16", "gap-u32", "bitmap")
VERSION = 1
SEP = "::"

_GAP_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.uint32))
_HEADER_WORDS = 5  # VERSION, codec, dtype, aux, ndim; then the shape


class CodecError(ValueError):
    """A payload that cannot be decoded; the message names the offending key."""


def encode_tensor(key: str, tensor: np.ndarray, spec: CodecSpec) -> dict[str, np.ndarray]:
    """One tensor's arrays on the wire.

    Args:
        key: the tensor's name; its arrays are ``<key>::meta`` and ``<key>::<part>``.
        tensor: any shape, float32/float16/float64 (``DTYPES``).
        spec: a validated codec spec.

    Returns:
        ``{<key>::meta: uint32[5 + ndim], <key>::<part>: 1-D array, ...}``, in that order
        (see the module's docstring for each codec's parts).

    Raises:
        ValueError: another dtype, a dimension or size above 2**32 - 1, or non-finite
            values for int8/int4/topk.
    """
    arr = np.asarray(tensor)
    if arr.dtype not in DTYPES:
        raise ValueError(f"tensor {key!r} has dtype {arr.dtype}; codecs take "
                         f"{[str(d) for d in DTYPES]}")
    if arr.size > U32_MAX or any(d > U32_MAX for d in arr.shape):
        raise ValueError(f"tensor {key!r} of shape {arr.shape} is too large to encode")
    x = np.ascontiguousarray(arr, dtype=np.float32).reshape(-1)
    if spec.name in ("int8", "int4", "topk") and not np.isfinite(x).all():
        raise ValueError(f"tensor {key!r} has non-finite values; {spec.name} needs "
                         "finite ones")
    parts, aux = _ENCODERS[spec.name](x, spec)
    out = {key + SEP + "meta": np.array(
        [VERSION, CODECS.index(spec.name), DTYPES.index(arr.dtype), aux, arr.ndim,
         *arr.shape], dtype=np.uint32)}
    out.update({key + SEP + part: value for part, value in parts.items()})
    return out


def decode_tensor(key: str, parts: dict[str, np.ndarray],
                  restore_dtype: bool = False) -> np.ndarray:
    """One tensor back from its arrays.

    Args:
        key: the tensor's name.
        parts: its arrays by part name (``meta``, ``val``, ``q``, ``scale``, ``idx``).
        restore_dtype: return the original dtype instead of float32.

    Returns:
        The tensor in its original shape, float32 (or its original dtype).

    Raises:
        CodecError: a missing, extra or malformed part, an unknown version, codec, dtype
            or index encoding, or out-of-range indices.
    """
    codec, dtype, aux, shape = _read_meta(key, parts)
    n = math.prod(shape)
    expected = _layout(key, codec, aux, n)
    extra = sorted(set(parts) - set(expected) - {"meta"})
    if extra:
        raise CodecError(f"unexpected key {key + SEP + extra[0]!r} for codec {codec!r}")
    for part, (want_dtype, count) in expected.items():
        _check(key + SEP + part, parts.get(part), want_dtype, count, shape)
    flat = _DECODERS[codec](parts, aux, n, key)
    return flat.reshape(shape).astype(dtype if restore_dtype else np.float32)


# --- encoders: (parts, aux) -------------------------------------------------------------

Parts = dict[str, np.ndarray]


def _enc_none(x: np.ndarray, spec: CodecSpec) -> tuple[Parts, int]:
    return {"val": x.copy()}, 0


def _enc_fp16(x: np.ndarray, spec: CodecSpec) -> tuple[Parts, int]:
    return {"val": x.astype(np.float16)}, 0


def _enc_bf16(x: np.ndarray, spec: CodecSpec) -> tuple[Parts, int]:
    bits = x.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)  # keep NaN a (quiet) NaN
    return {"val": rounded}, 0


def _quantise(x: np.ndarray, spec: CodecSpec) -> tuple[np.ndarray, np.ndarray]:
    """Block-wise symmetric quantisation: (q as int8, float16 scales)."""
    qmax, bs = QMAX[spec.name], spec.block_size
    blocks = -(-x.size // bs)
    padded = np.zeros(blocks * bs, np.float64)
    padded[: x.size] = x
    padded = padded.reshape(blocks, bs)
    want = np.abs(padded).max(axis=1, initial=0.0) / qmax
    scale = want.astype(np.float16)
    low = scale.astype(np.float64) < want  # round up so that |x| / scale <= qmax
    scale[low] = np.nextafter(scale[low], np.float16(np.inf))
    if not np.isfinite(scale).all():
        raise ValueError(f"{spec.name}: a block's max |x| exceeds what a float16 scale holds "
                         f"({65504 * qmax:g}); use fp32 ('none') for such tensors")
    div = scale.astype(np.float64)
    q = np.rint(padded / np.where(div > 0, div, 1.0)[:, None])
    q = np.clip(q, -qmax, qmax).astype(np.int8).reshape(-1)[: x.size]
    return q, scale


def _enc_int8(x: np.ndarray, spec: CodecSpec) -> tuple[Parts, int]:
    q, scale = _quantise(x, spec)
    return {"q": q, "scale": scale}, spec.block_size


def _enc_int4(x: np.ndarray, spec: CodecSpec) -> tuple[Parts, int]:
    q, scale = _quantise(x, spec)
    nib = np.full(q.size + q.size % 2, 8, np.uint8)
    nib[: q.size] = (q + 8).astype(np.uint8)
    return {"q": nib[0::2] | (nib[1::2] << 4), "scale": scale}, spec.block_size


def _enc_topk(x: np.ndarray, spec: CodecSpec) -> tuple[Parts, int]:
    n = x.size
    k = topk_count(n, spec.topk_fraction)
    idx = np.sort(np.argpartition(-np.abs(x), k - 1)[:k]) if 0 < k < n else np.arange(k)
    gaps = np.diff(idx, prepend=-1) - 1
    widest = int(gaps.max(initial=0))
    options: list[tuple[int, int, np.ndarray]] = [
        (k * dt.itemsize, enc, gaps.astype(dt))
        for enc, dt in enumerate(_GAP_DTYPES) if widest <= np.iinfo(dt).max]
    mask = np.zeros(n, bool)
    mask[idx] = True
    options.append((-(-n // 8), INDEX_ENCODINGS.index("bitmap"), np.packbits(mask)))
    _, enc, packed = min(options, key=lambda o: o[:2])
    return {"idx": packed, "val": x[idx].astype(np.float16)}, enc


_ENCODERS = {"none": _enc_none, "fp16": _enc_fp16, "bf16": _enc_bf16,
             "int8": _enc_int8, "int4": _enc_int4, "topk": _enc_topk}


# --- decoding ---------------------------------------------------------------------------


def _read_meta(key: str, parts: Parts) -> tuple[str, np.dtype, int, tuple[int, ...]]:
    name = key + SEP + "meta"
    meta = parts.get("meta")
    if meta is None:
        raise CodecError(f"missing key {name!r} (has {sorted(key + SEP + p for p in parts)})")
    if meta.dtype != np.uint32 or meta.ndim != 1 or meta.size < _HEADER_WORDS:
        raise CodecError(f"{name!r} must be uint32[>= {_HEADER_WORDS}], "
                         f"got {meta.dtype}{list(meta.shape)}")
    version, codec, dtype, aux, ndim = (int(v) for v in meta[:_HEADER_WORDS])
    if version != VERSION:
        raise CodecError(f"{name!r}: format version {version}, this decoder reads {VERSION}")
    if codec >= len(CODECS):
        raise CodecError(f"{name!r}: unknown codec tag {codec} (known: "
                         f"{', '.join(f'{i}={c}' for i, c in enumerate(CODECS))})")
    if dtype >= len(DTYPES):
        raise CodecError(f"{name!r}: unknown dtype code {dtype} (known: "
                         f"{', '.join(f'{i}={d}' for i, d in enumerate(DTYPES))})")
    if meta.size != _HEADER_WORDS + ndim:
        raise CodecError(f"{name!r}: header says ndim={ndim} but carries "
                         f"{meta.size - _HEADER_WORDS} dimensions")
    return CODECS[codec], DTYPES[dtype], aux, tuple(int(d) for d in meta[_HEADER_WORDS:])


def _layout(key: str, codec: str, aux: int, n: int) -> dict[str, tuple[np.dtype, int | None]]:
    """Expected {part: (dtype, element count)}; topk's count of values is free (k)."""
    name = key + SEP + "meta"
    if codec in ("none", "fp16", "bf16"):
        return {"val": (np.dtype({"none": np.float32, "fp16": np.float16,
                                  "bf16": np.uint16}[codec]), n)}
    if codec in QMAX:
        if aux < 1 or (codec == "int4" and aux % 2):
            raise CodecError(f"{name!r}: block size {aux} is invalid for {codec}")
        q_count = n if codec == "int8" else -(-n // 2)
        q_dtype = np.dtype(np.int8 if codec == "int8" else np.uint8)
        return {"q": (q_dtype, q_count), "scale": (np.dtype(np.float16), -(-n // aux))}
    if aux >= len(INDEX_ENCODINGS):
        raise CodecError(f"{name!r}: unknown topk index encoding {aux} "
                         f"(known: {', '.join(f'{i}={e}' for i, e in enumerate(INDEX_ENCODINGS))})")
    if INDEX_ENCODINGS[aux] == "bitmap":
        idx = (np.dtype(np.uint8), -(-n // 8))
    else:
        idx = (_GAP_DTYPES[aux], None)
    return {"idx": idx, "val": (np.dtype(np.float16), None)}


def _check(name: str, arr: np.ndarray | None, dtype: np.dtype, count: int | None,
           shape: tuple[int, ...]) -> None:
    if arr is None:
        raise CodecError(f"missing key {name!r}")
    if arr.dtype != dtype or arr.ndim != 1:
        raise CodecError(f"{name!r} must be a 1-D {dtype} array, got {arr.dtype}{list(arr.shape)}")
    if count is not None and arr.size != count:
        raise CodecError(f"{name!r} has {arr.size} elements but the header shape "
                         f"{shape} implies {count} (truncated payload or wrong shape)")


def _dec_plain(parts: Parts, aux: int, n: int, key: str) -> np.ndarray:
    val = parts["val"]
    if val.dtype == np.uint16:  # bf16 bit patterns
        return (val.astype(np.uint32) << 16).view(np.float32)
    return val.astype(np.float32)


def _dec_quant(parts: Parts, aux: int, n: int, key: str) -> np.ndarray:
    q = parts["q"]
    if q.dtype == np.uint8:  # int4: unpack nibbles
        q = (np.stack([q & 0xF, q >> 4], axis=1).reshape(-1)[:n].astype(np.int8) - 8)
    scale = np.repeat(parts["scale"].astype(np.float32), aux)[:n]
    return q.astype(np.float32) * scale


def _dec_topk(parts: Parts, aux: int, n: int, key: str) -> np.ndarray:
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


_DECODERS = {"none": _dec_plain, "fp16": _dec_plain, "bf16": _dec_plain,
             "int8": _dec_quant, "int4": _dec_quant, "topk": _dec_topk}
