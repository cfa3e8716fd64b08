"""The packed layout (``fedvit.wire.packing``): lossless round trips, loud refusals of a bad
index, the objects a packed message costs, and both sides' add-ons using it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg

from client_app.mods import packing_mod
from fedvit.codecs.payload import CodecSpec
from fedvit.keys import PACKED_PREFIX
from fedvit.wire.measure import message_size, tensor_bytes
from fedvit.wire.packing import PackingError, is_packed, pack, pack_record, unpack, unpack_record
from strategies.exchange import ExchangeCodecs
from strategy_fakes import FakeGrid, arrays_of, default_handler, round_trip

CHUNK = 5 * 1024 * 1024  # Flower 1.41 slices an Array's bytes into chunks of 5 MiB


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "blocks.0.attn.qkv.weight": rng.normal(size=(12, 4)).astype(np.float32),
        "half": rng.normal(size=(3, 5)).astype(np.float16),
        "double": rng.normal(size=7),
        "bf16 bits": rng.integers(0, 2**16, size=9, dtype=np.uint16),  # the bf16 codec's
        "int8::q": rng.integers(-127, 128, size=5, dtype=np.int8),
        "scalar": np.array(3.5, np.float32),
        "empty": np.zeros((0, 4), np.float32),
        "mask": np.array([True, False, True]),
        "big-endian": np.arange(4, dtype=">f4"),
        "nan-payload": np.array([np.nan, -np.inf, -0.0], np.float32),
    }


def test_a_round_trip_gives_every_tensor_back_bit_for_bit_in_order():
    tensors = _tensors()
    back = unpack(pack(tensors))
    assert list(back) == list(tensors)
    for name, arr in tensors.items():
        assert back[name].dtype == arr.dtype and back[name].shape == arr.shape, name
        assert back[name].tobytes() == arr.tobytes(), name
        assert back[name].flags.writeable and back[name].flags.aligned
    record = unpack_record(pack_record(arrays_of(tensors)))
    assert [(k, v.numpy().dtype, v.numpy().tobytes()) for k, v in record.items()] == [
        (k, v.dtype, v.tobytes()) for k, v in tensors.items()]


def test_packed_is_one_uint8_buffer_of_the_tensor_bytes_keyed_by_its_index():
    tensors = _tensors()
    record = pack(tensors)
    assert is_packed(record) and not is_packed(arrays_of(tensors))
    ((key, array),) = record.items()
    assert key.startswith(PACKED_PREFIX)
    assert json.loads(key[len(PACKED_PREFIX):])[0] == ["blocks.0.attn.qkv.weight", "<f4",
                                                       [12, 4]]
    assert (array.dtype, list(array.shape)) == ("uint8", [sum(t.nbytes for t in tensors.values())])
    assert tensor_bytes(RecordDict({"arrays": record})) == tensor_bytes(
        RecordDict({"arrays": arrays_of(tensors)}))  # the index is no tensor byte


def _packed_with(index, buffer: np.ndarray) -> ArrayRecord:
    key = PACKED_PREFIX + (index if isinstance(index, str) else json.dumps(index))
    return ArrayRecord({key: Array.from_numpy_ndarray(buffer)})


@pytest.mark.parametrize("record,reason", [
    (_packed_with("[[", np.zeros(4, np.uint8)), "not JSON"),
    (_packed_with({"w": 1}, np.zeros(4, np.uint8)), "is a dict, expected a list"),
    (_packed_with([["w", "<f4"]], np.zeros(4, np.uint8)), "entry 0"),
    (_packed_with([["w", "<f4", [-1]]], np.zeros(4, np.uint8)), "entry 0"),
    (_packed_with([["w", "<f4", [1]], ["w", "<f4", [1]]], np.zeros(8, np.uint8)),
     "'w' twice"),
    (_packed_with([["w", "nonsense", [1]]], np.zeros(4, np.uint8)), "numpy does not know"),
    (_packed_with([["w", "|O", [1]]], np.zeros(8, np.uint8)), "only bool, integer"),
    (_packed_with([["w", "<f4", [2]]], np.zeros(7, np.uint8)), "describes 8 bytes of 1 "
                                                              "tensors, but the buffer holds 7"),
    (_packed_with([["w", "<f4", [1]]], np.zeros(1, np.float32)), "dtype float32"),
    (arrays_of({"w": np.zeros(1, np.float32)}), "not a packed record"),
])
def test_a_bad_packed_record_is_refused_naming_what_is_wrong(record, reason):
    with pytest.raises(PackingError) as info:
        unpack(record)
    assert reason in str(info.value)


def test_tensors_of_other_dtypes_are_not_packed():
    with pytest.raises(PackingError, match="'names' has dtype <U3"):
        pack({"names": np.array(["abc"])})


def _objects(record: ArrayRecord) -> int:
    msg = Message(RecordDict({"arrays": record, "config": ConfigRecord({"server-round": 1})}),
                  dst_node_id=1, message_type="train")
    return message_size(msg)[1]


def test_a_packed_message_costs_six_objects_whatever_its_tensor_count():
    """Message, record dict, config record, ArrayRecord, one Array per tensor and one chunk
    per 5 MiB of it; packed: one Array."""
    for n in (1, 14, 80):
        tensors = {f"t{i}": np.full(3, i, np.float32) for i in range(n)}
        assert _objects(arrays_of(tensors)) == 4 + 2 * n
        assert _objects(pack(tensors)) == 6
    large = {"a": np.zeros(CHUNK // 4, np.float32), "b": np.zeros(1000, np.float32)}
    assert _objects(arrays_of(large)) == 4 + 2 + 3  # a (5 MiB + its npy header): 2 chunks
    assert _objects(pack(large)) == 4 + 1 + 2  # 5 MiB + 4,000 bytes + a header: 2 chunks


def test_the_client_mod_hands_the_handler_tensors_and_packs_the_reply_alike():
    tensors = _tensors()
    seen = {}

    def handler(msg: Message, _: Context) -> Message:
        seen.update({k: v.numpy() for k, v in msg.content["arrays"].items()})
        return Message(RecordDict({"arrays": msg.content["arrays"]}), reply_to=msg)

    context = Context(run_id=1, node_id=1, state=RecordDict(), run_config={}, node_config={})
    msg = Message(RecordDict({"arrays": pack(tensors)}), dst_node_id=1, message_type="train")
    reply = packing_mod(msg, context, handler)
    assert [(k, v.tobytes()) for k, v in seen.items()] == [
        (k, v.tobytes()) for k, v in tensors.items()]
    assert is_packed(msg.content["arrays"])  # what crossed the wire is left as it was
    assert is_packed(reply.content["arrays"])
    assert [v.tobytes() for v in unpack(reply.content["arrays"]).values()] == [
        v.tobytes() for v in tensors.values()]
    plain = Message(RecordDict({"arrays": arrays_of(tensors)}), dst_node_id=1,
                    message_type="train")
    assert not is_packed(packing_mod(plain, context, handler).content["arrays"])
    bad = Message(RecordDict({"arrays": _packed_with("[[", np.zeros(1, np.uint8))}),
                  dst_node_id=1, message_type="train")
    with pytest.raises(PackingError, match="not JSON"):
        packing_mod(bad, context, handler)


W = {"w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
     "b": np.arange(3, dtype=np.float32)}


def _codecs(pack_tensors: bool, down: str = "none", up: str = "none") -> ExchangeCodecs:
    return ExchangeCodecs(FedAvg(min_available_nodes=2, min_train_nodes=2),
                          CodecSpec.parse(down), CodecSpec.parse(up), "arrays", pack_tensors)


@pytest.mark.parametrize("down,up", [("none", "none"), ("bf16", "int8")])
def test_packed_and_unpacked_exchanges_aggregate_the_same_tensors(down, up):
    from fedvit.codecs.payload import encode_record, record_arrays

    def handler(msg, partition):
        content = default_handler(msg, partition)
        if up != "none":
            received = record_arrays(msg.content["arrays"])
            update = {k: v - received[k] for k, v in record_arrays(content["arrays"]).items()}
            content["arrays"] = encode_record(CodecSpec.parse(up), update)
        return content

    results = {}
    for packed in (False, True):
        codecs = _codecs(packed, down, up)
        grid = FakeGrid({1: 0, 2: 1}, handler)
        messages, replies, (arrays, _) = round_trip(codecs, grid, 1, W)
        assert all(is_packed(m.content["arrays"]) == packed for m in messages)
        assert all(is_packed(r.content["arrays"]) == packed for r in replies)
        assert codecs.rejections == []
        results[packed] = {k: v.numpy() for k, v in arrays.items()}
    assert [(k, v.tobytes()) for k, v in results[True].items()] == [
        (k, v.tobytes()) for k, v in results[False].items()]


@pytest.mark.parametrize("pack_tensors,reply,reason", [
    (True, lambda t: arrays_of(t), "payload is not packed, but pack-tensors is true"),
    (False, lambda t: pack(t), "payload is packed, but pack-tensors is false"),
    (True, lambda t: _packed_with([["w", "<f4", [3, 4]]], np.zeros(5, np.uint8)),
     "describes 48 bytes of 1 tensors, but the buffer holds 5"),
    (True, lambda t: pack({"w": t["w"]}), "1 tensors missing ['b']"),
])
def test_a_reply_in_the_wrong_layout_or_badly_packed_is_rejected(pack_tensors, reply, reason):
    codecs = _codecs(pack_tensors)
    grid = FakeGrid({1: 0, 2: 1})
    messages = list(codecs.configure_train(1, arrays_of(W), ConfigRecord(), grid))
    good = grid.send_and_receive(messages[:1])
    bad = Message(RecordDict({"arrays": reply({k: v + 1 for k, v in W.items()}),
                              "metrics": MetricRecord({"num-examples": 5,
                                                       "partition-id": 1})}),
                  reply_to=messages[1])
    arrays, _ = codecs.aggregate_train(1, [*good, bad])
    assert len(codecs.rejections) == 1 and reason in codecs.rejections[0]["reason"]
    assert arrays is not None  # node 1's reply alone
