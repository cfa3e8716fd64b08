"""Lossy codecs for the tensors exchanged each round, with exact byte accounting.

``encode`` turns ``{key: float array}`` into a flat ``{str: np.ndarray}`` dict that is
shipped as-is (e.g. as the arrays of a Flower ``ArrayRecord``) and that ``decode`` turns back
into float32 arrays of the original shapes, needing nothing else. Because the encoded arrays
*are* what travels, the encoded size is simply ``encoded_bytes(enc) = Σ arr.nbytes`` (the
same Σ itemsize × elements that :func:`fedvit.wire.measure.tensor_bytes` counts): headers, scales
and indices included. The wire format is ``fedvit.codecs.format``'s; the spec of a codec
(``CodecSpec``) is ``fedvit.codecs.spec``'s.

Top-k drops mass; :class:`ErrorFeedback` keeps it as a residual that is added to the next
round's input, so over rounds ``Σ decoded + residual == Σ inputs`` (up to the float32
rounding of ``input + residual``; the float16 rounding of sent values lands in the residual).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord

from fedvit.codecs.format import SEP, CodecError, decode_tensor, encode_tensor
from fedvit.codecs.spec import CodecSpec


def encode(spec: str | CodecSpec, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Encode every tensor with ``spec`` (format: ``fedvit.codecs.format``).

    Args:
        spec: a codec spec, or a bare codec name (its default knobs).
        tensors: ``{name: array}``, any shapes, float32/float16/float64.

    Returns:
        ``{<name>::<part>: 1-D array}``, tensor by tensor in input order, ``::meta`` first.

    Raises:
        ValueError: a spec that is not allowed, another dtype, a tensor too large, or
            non-finite values for int8/int4/topk.
    """
    spec = (CodecSpec(spec) if isinstance(spec, str) else spec).validate()
    out: dict[str, np.ndarray] = {}
    for key, tensor in tensors.items():
        out.update(encode_tensor(key, tensor, spec))
    return out


def decode(encoded: dict[str, np.ndarray], restore_dtype: bool = False) -> dict[str, np.ndarray]:
    """The tensors of an encoded payload.

    Args:
        encoded: what ``encode`` returned (in any order).
        restore_dtype: give each tensor its original dtype instead of float32.

    Returns:
        ``{name: array}`` in the order the names first occur, original shapes, float32
        (or the original dtype).

    Raises:
        CodecError: a key without ``::``, or a malformed tensor (see
            ``fedvit.codecs.format.decode_tensor``).
    """
    groups: dict[str, dict[str, np.ndarray]] = {}
    for name, value in encoded.items():
        key, sep, part = name.rpartition(SEP)
        if not sep:
            raise CodecError(f"key {name!r} is not a codec key '<tensor>{SEP}<part>'")
        groups.setdefault(key, {})[part] = np.asarray(value)
    return {key: decode_tensor(key, parts, restore_dtype) for key, parts in groups.items()}


def encoded_bytes(encoded: dict[str, np.ndarray]) -> int:
    """What a payload weighs.

    Args:
        encoded: what ``encode`` returned (or any dict of arrays).

    Returns:
        Bytes: Σ itemsize × elements over all arrays, headers included.
    """
    return sum(np.asarray(arr).nbytes for arr in encoded.values())


class ErrorFeedback:
    """Residual memory for lossy (top-k) uploads.

    Each round: ``c = ef.compensate(x)``; ``d = decode(encode(spec, c))``; ``ef.update(c, d)``.
    The residual ``c - d`` is exactly what was not delivered (all of a dropped entry, the
    float16 rounding of a sent one), computed exactly in float32, so ``d + residual == c``.

    Args:
        residual: ``{name: array}`` carried over (stored as float32), or None for none.
    """

    def __init__(self, residual: dict[str, np.ndarray] | None = None) -> None:
        self.residual = {k: np.asarray(v, dtype=np.float32) for k, v in (residual or {}).items()}

    def compensate(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """This round's input plus what earlier rounds did not deliver.

        Args:
            tensors: ``{name: array}`` to send.

        Returns:
            ``tensors + residual`` in float32 (new arrays; a tensor without a residual is
            copied unchanged).

        Raises:
            ValueError: a residual's shape differs from its tensor's.
        """
        out = {}
        for key, value in tensors.items():
            x = np.asarray(value, dtype=np.float32)
            r = self.residual.get(key)
            if r is not None and r.shape != x.shape:
                raise ValueError(f"residual {key!r} has shape {r.shape}, tensor {x.shape}")
            out[key] = x + r if r is not None else x.copy()
        return out

    def update(self, sent_input: dict[str, np.ndarray], decoded: dict[str, np.ndarray]) -> None:
        """Residual = what was fed to the encoder − what the receiver decoded (float32).

        Args:
            sent_input: what ``compensate`` returned and was encoded.
            decoded: the receiver's ``decode`` of it.

        Raises:
            ValueError: ``decoded`` lacks a tensor of ``sent_input``.
        """
        missing = sorted(set(sent_input) - set(decoded))
        if missing:
            raise ValueError(f"decoded tensors lack {missing[0]!r}")
        self.residual = {k: np.asarray(v, dtype=np.float32) - np.asarray(decoded[k], np.float32)
                         for k, v in sent_input.items()}

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The residuals, e.g. for an ``ArrayRecord`` in ``context.state``.

        Returns:
            ``{name: array}``, float32 copies.
        """
        return {k: v.copy() for k, v in self.residual.items()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ErrorFeedback:
        """The memory from stored residuals.

        Args:
            arrays: what ``to_arrays`` gave (stored as float32).

        Returns:
            The error-feedback memory.
        """
        return cls(arrays)


def is_encoded(keys: Iterable[str]) -> bool:
    """Whether a record's keys are an encoded payload.

    Args:
        keys: the record's keys.

    Returns:
        True when a key is a ``<name>::meta`` header.
    """
    return any(k.endswith(SEP + "meta") for k in keys)


def encode_record(spec: CodecSpec, tensors: dict[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord carrying an encoded payload.

    Args:
        spec: the codec.
        tensors: ``{name: array}``, float32/float16/float64.

    Returns:
        The record of ``encode(spec, tensors)``'s arrays.

    Raises:
        ValueError: as ``encode`` raises.
    """
    return ArrayRecord({k: Array.from_numpy_ndarray(np.ascontiguousarray(v))
                        for k, v in encode(spec, tensors).items()})


def record_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The float arrays a record carries.

    Args:
        record: an encoded payload (``is_encoded``) or plain tensors.

    Returns:
        ``{name: array}``: decoded (float32) if encoded, as they are otherwise.

    Raises:
        CodecError: as ``decode`` raises.
    """
    arrays = {k: v.numpy() for k, v in record.items()}
    return decode(arrays) if is_encoded(arrays) else arrays
