"""What crosses the wire (a wrapper): tensors go down encoded (``codec-down``) and packed; each
train reply is unpacked, decoded (``codec-up``) and checked, or rejected and not aggregated."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedvit.codecs.payload import CodecSpec, decode, encode, encode_record, is_encoded
from fedvit.keys import METRICS, PARTITION_ID
from fedvit.wire.packing import is_packed, pack, unpack
from strategies.wrapper import TRAIN, StrategyWrapper


class RejectedReply(ValueError):
    """A train reply that cannot be aggregated."""


class ExchangeCodecs(StrategyWrapper):
    """Hands down the accepted train replies ordered by partition (errors last), so the
    aggregate ignores arrival order; ``self.rejections``: ``{"round", "node-id", "reason"}``."""

    def __init__(self, strategy: Strategy, codec_down: CodecSpec, codec_up: CodecSpec,
                 arrayrecord_key: str, pack: bool) -> None:
        super().__init__(strategy)
        self.codec_down, self.codec_up = codec_down, codec_up
        self.pack, self.arrayrecord_key = pack, arrayrecord_key
        self.rejections: list[dict] = []
        self._global: dict[str, np.ndarray] = {}

    def resume(self, rejections: list[dict]) -> None:
        """Start the rejections with a checkpoint's."""
        self.rejections[:] = rejections

    def configure(self, phase: str, server_round: int, arrays: ArrayRecord,
                  config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        tensors = {k: v.numpy() for k, v in arrays.items()}
        if phase == TRAIN:
            self._global = tensors
        plain = self.codec_down.name == "none"
        if self.pack:
            arrays = pack(tensors if plain else encode(self.codec_down, tensors))
        elif not plain:
            arrays = encode_record(self.codec_down, tensors)
        return super().configure(phase, server_round, arrays, config, grid)

    def aggregate(self, phase: str, server_round: int, replies: Iterable[Message]) -> Any:
        if phase != TRAIN:
            return super().aggregate(phase, server_round, replies)
        kept = []
        for msg in replies:
            try:
                kept.append(msg if msg.has_error() else self._accept(msg))
            except ValueError as err:  # RejectedReply, PackingError, a codec's error
                node = msg.metadata.src_node_id
                self.rejections.append({"round": server_round, "node-id": node,
                                        "reason": str(err)})
                log(WARNING, "round %d: REJECTED reply of node %d, not aggregated: %s",
                    server_round, node, err)
        kept.sort(key=lambda m: float("inf") if m.has_error() else  # a fixed summation order
                  float(m.content.metric_records.get(METRICS, {}).get(PARTITION_ID, 0)))
        return super().aggregate(phase, server_round, kept)

    def _accept(self, msg: Message) -> Message:
        """The reply with decoded, checked global-shaped tensors, or ``RejectedReply``."""
        if (record := msg.content.array_records.get(self.arrayrecord_key)) is None:
            raise RejectedReply(f"no ArrayRecord {self.arrayrecord_key!r}")
        packed = is_packed(record)
        if packed != self.pack:
            raise RejectedReply(f"payload is {'' if packed else 'not '}packed, but "
                                f"pack-tensors is {str(self.pack).lower()}")
        tensors = unpack(record) if packed else {k: v.numpy() for k, v in record.items()}
        encoded = is_encoded(tensors)
        if encoded != (self.codec_up.name != "none"):
            raise RejectedReply(f"payload is {'' if encoded else 'not '}encoded, but "
                                f"codec-up is {self.codec_up.name!r}")
        arrays = decode(tensors) if encoded else tensors
        check(arrays, self._global)
        if encoded:  # an update relative to the round's global tensors
            arrays = {k: self._global[k] + arrays[k] for k in self._global}
        content = RecordDict(dict(msg.content.items()))
        content[self.arrayrecord_key] = ArrayRecord(
            {k: Array.from_numpy_ndarray(np.ascontiguousarray(v, dtype=self._global[k].dtype))
             for k, v in arrays.items()})
        return Message(content=content, metadata=copy.deepcopy(msg.metadata))


def check(arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    """Same keys, shapes and dtypes as ``reference``, only finite values, or
    ``RejectedReply`` naming the first thing that differs."""
    missing, extra = sorted(set(reference) - set(arrays)), sorted(set(arrays) - set(reference))
    if missing or extra:
        raise RejectedReply(f"{len(missing)} tensors missing {missing[:2]}, {len(extra)} extra "
                            f"{extra[:2]}")
    for key, ref in reference.items():
        arr = arrays[key]
        if arr.shape != ref.shape:
            raise RejectedReply(f"tensor {key!r} has shape {arr.shape}, expected {ref.shape}")
        if arr.dtype != ref.dtype:
            raise RejectedReply(f"tensor {key!r} has dtype {arr.dtype}, expected {ref.dtype}")
        if not np.isfinite(arr).all():
            raise RejectedReply(f"tensor {key!r} holds NaN or Inf")
