"""Lossy codecs for the tensors exchanged each round, with exact byte accounting: the encoded
arrays travel as an ``ArrayRecord``'s, so a payload weighs ``Σ arr.nbytes`` (headers, scales,
indices included). Wire format: ``fedvit.codecs.format``."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord

from fedvit.codecs.format import SEP, CodecError, decode_tensor, encode_tensor
from fedvit.codecs.spec import CodecSpec


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
    """Residual memory for lossy (top-k) uploads. Each round: ``c = ef.compensate(x)``;
    ``d = decode(encode(spec, c))``; ``ef.update(c, d)``. The float32 residual ``c - d`` is what
    was not delivered (a dropped entry, a sent one's float16 rounding), so over rounds
    ``Σ decoded + residual == Σ inputs``."""

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
        """Float32 copies of the residuals (e.g. for ``context.state``)."""
        return {k: v.copy() for k, v in self.residual.items()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ErrorFeedback:
        return cls(arrays)


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
