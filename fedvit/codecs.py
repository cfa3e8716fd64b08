"""Lossy codecs for the tensors exchanged each round, with exact byte accounting.

``encode`` turns ``{key: float array}`` into a flat ``{str: np.ndarray}`` dict that is
shipped as-is (e.g. as the arrays of a Flower ``ArrayRecord``) and that ``decode`` turns back
into float32 arrays of the original shapes, needing nothing else. Because the encoded arrays
*are* what travels, the encoded size is simply ``encoded_bytes(enc) = Σ arr.nbytes`` (the
same Σ itemsize × elements that :func:`fedvit.wire.tensor_bytes` counts): headers, scales
and indices included.

Wire format: for every tensor ``K`` (in input order) the keys below, all 1-D arrays.

``K::meta``  uint32 ``[VERSION, codec, dtype, aux, ndim, *shape]`` (4 × (5 + ndim) bytes);
             ``codec`` is the index into :data:`CODECS`, ``dtype`` the original dtype
             (:data:`DTYPES`), ``aux`` the block size (int8/int4), the index encoding
             (topk, :data:`INDEX_ENCODINGS`), else 0.

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

Top-k drops mass; :class:`ErrorFeedback` keeps it as a residual that is added to the next
round's input, so over rounds ``Σ decoded + residual == Σ inputs`` (up to the float32
rounding of ``input + residual``; the float16 rounding of sent values lands in the residual).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from flwr.app import Array, ArrayRecord

CODECS = ("none", "fp16", "bf16", "int8", "int4", "topk")
DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64))
INDEX_ENCODINGS = ("gap-u8", "gap-u16", "gap-u32", "bitmap")
VERSION = 1
SEP = "::"

_GAP_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.uint32))
_QMAX = {"int8": 127, "int4": 7}
_HEADER_WORDS = 5  # VERSION, codec, dtype, aux, ndim; then the shape
_U32_MAX = 2**32 - 1


class CodecError(ValueError):
    """A payload that cannot be decoded; the message names the offending key."""


@dataclass(frozen=True)
class CodecSpec:
    """Which codec, and its knobs (``block_size``: int8/int4, ``topk_fraction``: topk).

    The default block of 128 elements is what keeps int8 under 25.5 % and int4 under 13 %
    of fp32 for a ViT-B LoRA update: a float16 scale per 64 elements costs 1/32 byte each.
    """

    name: str
    block_size: int = 128
    topk_fraction: float = 0.1

    def validate(self) -> CodecSpec:
        """Raise ValueError naming the field, its value and what is allowed; else self."""
        if self.name not in CODECS:
            raise ValueError(f"CodecSpec.name={self.name!r} is not allowed: use one of {CODECS}")
        bs = self.block_size
        if isinstance(bs, bool) or not isinstance(bs, int) or not 1 <= bs <= _U32_MAX:
            raise ValueError(f"CodecSpec.block_size={bs!r} is not allowed: "
                             f"it must be an integer in [1, {_U32_MAX}]")
        if self.name == "int4" and (bs < 2 or bs % 2):
            raise ValueError(f"CodecSpec.block_size={bs!r} is not allowed for int4: "
                             "it must be an even integer >= 2 (two values per byte)")
        f = self.topk_fraction
        if isinstance(f, bool) or not isinstance(f, int | float) or not 0 < f <= 1:
            raise ValueError(f"CodecSpec.topk_fraction={f!r} is not allowed: "
                             "it must be a number with 0 < topk_fraction <= 1")
        return self

    @classmethod
    def parse(cls, text: str) -> CodecSpec:
        """``"none"``, ``"fp16"``, ``"int8"``, ``"int4:64"`` (block size), ``"topk:0.05"``."""
        name, _, arg = text.strip().partition(":")
        name = name.strip()
        if not arg:
            return cls(name).validate()
        try:
            if name in _QMAX:
                return cls(name, block_size=int(arg)).validate()
            if name == "topk":
                return cls(name, topk_fraction=float(arg)).validate()
        except ValueError as err:
            raise ValueError(f"codec {text!r} is not allowed: {err}") from None
        raise ValueError(f"codec {text!r} is not allowed: only int8/int4 (block size) and "
                         f"topk (fraction) take an argument; codecs are {CODECS}")


def topk_count(n: int, fraction: float) -> int:
    """``ceil(fraction × n)`` with ``fraction`` read as the decimal it prints as
    (so 0.1 × 30 is 3, not 4 from binary rounding)."""
    return math.ceil(Fraction(repr(float(fraction))) * n)


def encode(spec: str | CodecSpec, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Encode every tensor with ``spec``; see the module docstring for the format."""
    spec = (CodecSpec(spec) if isinstance(spec, str) else spec).validate()
    out: dict[str, np.ndarray] = {}
    for key, tensor in tensors.items():
        arr = np.asarray(tensor)
        if arr.dtype not in DTYPES:
            raise ValueError(f"tensor {key!r} has dtype {arr.dtype}; codecs take "
                             f"{[str(d) for d in DTYPES]}")
        if arr.size > _U32_MAX or any(d > _U32_MAX for d in arr.shape):
            raise ValueError(f"tensor {key!r} of shape {arr.shape} is too large to encode")
        x = np.ascontiguousarray(arr, dtype=np.float32).reshape(-1)
        if spec.name in ("int8", "int4", "topk") and not np.isfinite(x).all():
            raise ValueError(f"tensor {key!r} has non-finite values; {spec.name} needs "
                             "finite ones")
        parts, aux = _ENCODERS[spec.name](x, spec)
        out[key + SEP + "meta"] = np.array(
            [VERSION, CODECS.index(spec.name), DTYPES.index(arr.dtype), aux, arr.ndim,
             *arr.shape], dtype=np.uint32)
        out.update({key + SEP + part: value for part, value in parts.items()})
    return out


def decode(encoded: dict[str, np.ndarray], restore_dtype: bool = False) -> dict[str, np.ndarray]:
    """Float32 tensors of the original shapes (original dtype if ``restore_dtype``)."""
    groups: dict[str, dict[str, np.ndarray]] = {}
    for name, value in encoded.items():
        key, sep, part = name.rpartition(SEP)
        if not sep:
            raise CodecError(f"key {name!r} is not a codec key '<tensor>{SEP}<part>'")
        groups.setdefault(key, {})[part] = np.asarray(value)
    out: dict[str, np.ndarray] = {}
    for key, parts in groups.items():
        codec, dtype, aux, shape = _read_meta(key, parts)
        n = math.prod(shape)
        expected = _layout(key, codec, aux, n)
        extra = sorted(set(parts) - set(expected) - {"meta"})
        if extra:
            raise CodecError(f"unexpected key {key + SEP + extra[0]!r} for codec {codec!r}")
        for part, (want_dtype, count) in expected.items():
            _check(key + SEP + part, parts.get(part), want_dtype, count, shape)
        flat = _DECODERS[codec](parts, aux, n, key)
        out[key] = flat.reshape(shape).astype(dtype if restore_dtype else np.float32)
    return out


def encoded_bytes(encoded: dict[str, np.ndarray]) -> int:
    """What the payload weighs: Σ itemsize × elements over all arrays (headers included)."""
    return sum(np.asarray(arr).nbytes for arr in encoded.values())


class ErrorFeedback:
    """Residual memory for lossy (top-k) uploads.

    Each round: ``c = ef.compensate(x)``; ``d = decode(encode(spec, c))``; ``ef.update(c, d)``.
    The residual ``c - d`` is exactly what was not delivered (all of a dropped entry, the
    float16 rounding of a sent one), computed exactly in float32, so ``d + residual == c``.
    """

    def __init__(self, residual: dict[str, np.ndarray] | None = None) -> None:
        self.residual = {k: np.asarray(v, dtype=np.float32) for k, v in (residual or {}).items()}

    def compensate(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``tensors + residual`` in float32 (tensors without a residual pass unchanged)."""
        out = {}
        for key, value in tensors.items():
            x = np.asarray(value, dtype=np.float32)
            r = self.residual.get(key)
            if r is not None and r.shape != x.shape:
                raise ValueError(f"residual {key!r} has shape {r.shape}, tensor {x.shape}")
            out[key] = x + r if r is not None else x.copy()
        return out

    def update(self, sent_input: dict[str, np.ndarray], decoded: dict[str, np.ndarray]) -> None:
        """Residual = what was fed to the encoder − what the receiver decoded."""
        missing = sorted(set(sent_input) - set(decoded))
        if missing:
            raise ValueError(f"decoded tensors lack {missing[0]!r}")
        self.residual = {k: np.asarray(v, dtype=np.float32) - np.asarray(decoded[k], np.float32)
                         for k, v in sent_input.items()}

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Copies of the residuals, e.g. for a Flower ``ArrayRecord`` in ``context.state``."""
        return {k: v.copy() for k, v in self.residual.items()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ErrorFeedback:
        return cls(arrays)


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
    qmax, bs = _QMAX[spec.name], spec.block_size
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
    if codec in _QMAX:
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


# --- Flower records ---------------------------------------------------------------------


def is_encoded(keys: Iterable[str]) -> bool:
    """Whether a record's keys are an encoded payload (every tensor has ``K::meta``)."""
    return any(k.endswith(SEP + "meta") for k in keys)


def encode_record(spec: CodecSpec, tensors: dict[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord carrying ``encode(spec, tensors)``."""
    return ArrayRecord({k: Array.from_numpy_ndarray(np.ascontiguousarray(v))
                        for k, v in encode(spec, tensors).items()})


def record_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The float arrays a record carries: decoded if encoded, as-is otherwise."""
    arrays = {k: v.numpy() for k, v in record.items()}
    return decode(arrays) if is_encoded(arrays) else arrays
