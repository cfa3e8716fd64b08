"""What crosses the wire, for any message-API strategy (a wrapper): encode down, decode and
check up.

The global tensors go down encoded with ``codec-down``. Clients send their update
(local - received) encoded with ``codec-up``, or their tensors as they are when
``codec-up`` is ``none``. Every train reply is decoded and checked against the round's
global tensors (same keys, shapes and dtype, all finite); a reply that fails is rejected
with a logged reason and left out of the aggregate, and the round goes on with the others.

With ``pack-tensors`` the (encoded) tensors go down packed into one buffer
(``fedvit.wire.packing``), the last step before the wire, and a reply is unpacked first, before
it is decoded and checked: the inner strategy sees exactly the tensors it sees unpacked.
A reply in the other layout, or whose packing is malformed, is rejected like any other.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedvit.codecs.payload import CodecSpec, decode, encode, encode_record, is_encoded
from fedvit.keys import METRICS, PARTITION_ID
from fedvit.wire.packing import is_packed, pack, unpack
from strategies.wrapper import StrategyWrapper


class RejectedReply(ValueError):
    """A train reply that cannot be aggregated."""


class ExchangeCodecs(StrategyWrapper):
    """Encodes what goes down, decodes and checks what comes up, and hands the inner
    strategy the accepted train replies in a fixed order (by partition, errors last), so the
    aggregate is the same whichever order the replies arrived in.

    ``self.rejections`` lists every rejected reply as ``{"round", "node-id", "reason"}``.

    Args:
        strategy: the inner strategy (it aggregates decoded, global-shaped tensors).
        codec_down: how the global tensors are encoded for the clients.
        codec_up: how the clients encode their update (``none``: they send tensors).
        arrayrecord_key: the ArrayRecord of a reply that holds the tensors.
        pack: send the tensors packed and take only packed replies (``pack-tensors``).
    """

    def __init__(self, strategy: Strategy, codec_down: CodecSpec, codec_up: CodecSpec,
                 arrayrecord_key: str, pack: bool) -> None:
        super().__init__(strategy)
        self.codec_down, self.codec_up = codec_down, codec_up
        self.pack = pack
        self.arrayrecord_key = arrayrecord_key
        self.rejections: list[dict] = []
        self._global: dict[str, np.ndarray] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = {k: v.numpy() for k, v in arrays.items()}
        return self.strategy.configure_train(server_round, self._down(arrays), config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, self._down(arrays), config,
                                                grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        kept = []
        for msg in replies:
            if msg.has_error():
                kept.append(msg)
                continue
            try:
                kept.append(self._accept(msg))
            except (RejectedReply, ValueError) as err:
                node = msg.metadata.src_node_id
                self.rejections.append({"round": server_round, "node-id": node,
                                        "reason": str(err)})
                log(WARNING, "round %d: REJECTED reply of node %d, not aggregated: %s",
                    server_round, node, err)
        kept.sort(key=_partition)  # a fixed summation order: reproducible aggregates
        return self.strategy.aggregate_train(server_round, kept)

    def resume(self, rejections: list[dict]) -> None:
        """Start the rejections with a checkpoint's."""
        self.rejections = list(rejections)

    def _down(self, arrays: ArrayRecord) -> ArrayRecord:
        if not self.pack:
            if self.codec_down.name == "none":
                return arrays
            return encode_record(self.codec_down, {k: v.numpy() for k, v in arrays.items()})
        tensors = {k: v.numpy() for k, v in arrays.items()}
        return pack(tensors if self.codec_down.name == "none"
                    else encode(self.codec_down, tensors))

    def _accept(self, msg: Message) -> Message:
        """The reply with decoded, checked global-shaped tensors, or ``RejectedReply``."""
        record = msg.content.array_records.get(self.arrayrecord_key)
        if record is None:
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
    """Same keys, shapes and dtypes as ``reference``, and only finite values.

    Args:
        arrays: a reply's decoded tensors by name.
        reference: the round's global tensors by name.

    Raises:
        RejectedReply: naming the first thing that differs.
    """
    missing, extra = sorted(set(reference) - set(arrays)), sorted(set(arrays) - set(reference))
    if missing or extra:
        raise RejectedReply(f"{len(missing)} tensors missing {missing[:2]}, {len(extra)} "
                            f"extra {extra[:2]}")
    for key, ref in reference.items():
        arr = arrays[key]
        if arr.shape != ref.shape:
            raise RejectedReply(f"tensor {key!r} has shape {arr.shape}, expected {ref.shape}")
        if arr.dtype != ref.dtype:
            raise RejectedReply(f"tensor {key!r} has dtype {arr.dtype}, expected {ref.dtype}")
        if not np.isfinite(arr).all():
            raise RejectedReply(f"tensor {key!r} holds NaN or Inf")


def _partition(msg: Message) -> float:
    """The partition a reply reports (errors last): FedAvg sums in this order."""
    if msg.has_error():
        return float("inf")
    return float(msg.content.metric_records.get(METRICS, {}).get(PARTITION_ID, 0))
