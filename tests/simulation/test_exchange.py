"""Codecs in a federation, FFA-LoRA, the naive aggregation error, and bad replies."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message

from fedvit.wire.packing import is_packed, pack, unpack
from simulate import FAST, client_app, simulate
from strategies.exchange import RejectedReply, check
from strategies.fedlora import naive_aggregation_errors


def _pair(rng, rank=2, d_in=4, d_out=3):
    return rng.normal(size=(rank, d_in)), rng.normal(size=(d_out, rank))


def test_naive_error_matches_a_hand_computation_and_vanishes_with_a_shared_a():
    rng = np.random.default_rng(0)
    (a1, b1), (a2, b2) = _pair(rng), _pair(rng)
    clients = [{"x.lora_A.w": a1, "x.lora_B.w": b1}, {"x.lora_A.w": a2, "x.lora_B.w": b2}]
    mean_ba = 0.25 * b1 @ a1 + 0.75 * b2 @ a2
    naive = (0.25 * b1 + 0.75 * b2) @ (0.25 * a1 + 0.75 * a2)
    expected = np.linalg.norm(naive - mean_ba) / np.linalg.norm(mean_ba)
    assert naive_aggregation_errors(clients, [1, 3]) == [pytest.approx(expected)]
    assert expected > 0.05
    for c in clients:  # FFA: every client shares A, so mean(B)·A == mean(B·A)
        c["x.lora_A.w"] = a1
    assert naive_aggregation_errors(clients, [1, 3]) == [pytest.approx(0.0, abs=1e-12)]


def test_naive_error_leaves_numpys_blas_alone(monkeypatch):
    """The metric runs between aggregation and central evaluation: numpy's norm or dot of a
    layer's product wakes OpenBLAS's worker, which then spins for about 0.1 s of CPU right
    when central evaluation starts. The metric runs in torch: with numpy's BLAS entry
    points refused, it still gives the same errors."""
    rng = np.random.default_rng(0)
    clients = [{"q.lora_A.w": rng.normal(size=(8, 64)).astype(np.float32),
                "q.lora_B.w": rng.normal(size=(192, 8)).astype(np.float32)} for _ in range(4)]
    expected = naive_aggregation_errors(clients, [1, 2, 3, 4])

    def refused(*args, **kwargs):
        raise AssertionError("numpy's BLAS was called")

    for name in ("dot", "matmul", "einsum", "inner", "vdot", "tensordot"):
        monkeypatch.setattr(np, name, refused)
    monkeypatch.setattr(np.linalg, "norm", refused)
    assert naive_aggregation_errors(clients, [1, 2, 3, 4]) == expected and expected[0] > 0


@pytest.mark.parametrize("bad,reason", [
    ({"w": np.array([1.0, np.nan], np.float32)}, "NaN or Inf"),
    ({"w": np.zeros(3, np.float32)}, "shape (3,)"),
    ({"w": np.zeros(2, np.float64)}, "dtype float64"),
    ({}, "1 tensors missing ['w']"),
    ({"w": np.zeros(2, np.float32), "v": np.zeros(1, np.float32)}, "1 extra ['v']"),
])
def test_check_names_what_is_wrong(bad, reason):
    with pytest.raises(RejectedReply) as info:
        check(bad, {"w": np.zeros(2, np.float32)})
    assert reason in str(info.value)


def test_ffa_with_codecs_exchanges_only_b_and_the_books_stay_exact(tmp_path):
    outcome = simulate({**FAST, "strategy": "fedlora", "lora-aggregation": "ffa",
                        "codec-down": "bf16", "codec-up": "int8", "learning-rate": 0.005,
                        "outputs-dir": str(tmp_path)})
    keys = set(outcome.initial_arrays.keys())
    assert keys and not any(".lora_A." in k for k in keys)
    assert sum(".lora_B." in k for k in keys) == 6
    totals, est = outcome.books.totals(), outcome.summary["estimate"]
    assert (totals["down-tensor"], totals["up-tensor"]) == (est["down"], est["up"])
    assert est["up-bytes-per-message"] < 0.3 * 4 * sum(
        int(np.prod(a.shape)) for a in outcome.initial_arrays.values())
    assert outcome.books.mismatches == [] and outcome.summary["rejected-replies"] == []
    assert all(r["lora-agg-error-mean"] is None for r in outcome.rounds)  # exact: no error
    assert outcome.rounds[-1]["central-accuracy"] > 0.15


def _corrupt_partition_zero(how_by_round: dict[int, str]):
    """A client mod that damages partition 0's train reply after it was measured (inside its
    packing, when it is packed: the reply stays well packed, its tensors are damaged)."""

    def mod(msg: Message, context: Context, call_next) -> Message:
        reply = call_next(msg, context)
        rnd = int(msg.content["config"]["server-round"])
        if context.node_config["partition-id"] != 0 or msg.metadata.message_type != "train":
            return reply
        packed = is_packed(reply.content["arrays"])
        arrays = (unpack(reply.content["arrays"]) if packed
                  else {k: v.numpy().copy() for k, v in reply.content["arrays"].items()})
        first = next(k for k in sorted(arrays) if arrays[k].dtype.kind == "f")
        how = how_by_round[rnd]
        if how == "nan":
            arrays[first].reshape(-1)[0] = np.nan
        elif how == "shape":
            arrays[first] = arrays[first].reshape(-1)[:-1]
        elif how == "extra":
            arrays["intruder"] = np.zeros(3, np.float32)
        elif how == "truncate":
            q = next(k for k in sorted(arrays) if k.endswith("::q"))
            arrays[q] = arrays[q][:-5]
        elif how == "tag":
            meta = next(k for k in sorted(arrays) if k.endswith("::meta"))
            arrays[meta][1] = 42
        reply.content["arrays"] = (pack(arrays) if packed else ArrayRecord(
            {k: Array.from_numpy_ndarray(v) for k, v in arrays.items()}))
        return reply

    return mod


@pytest.mark.parametrize("codec_up,how", [
    ("none", {1: "nan", 2: "shape", 3: "extra"}),
    ("int8", {1: "truncate", 2: "tag", 3: "nan"}),
])
def test_bad_replies_are_rejected_and_the_rounds_go_on(tmp_path, codec_up, how):
    overrides = {**FAST, "strategy": "fedlora", "num-server-rounds": 3, "codec-up": codec_up,
                 "outputs-dir": str(tmp_path)}
    outcome = simulate(overrides, num_nodes=3,
                       client=client_app(overrides, [_corrupt_partition_zero(how)]))
    rejected = outcome.summary["rejected-replies"]
    assert [r["round"] for r in rejected] == [1, 2, 3]
    assert len({r["node-id"] for r in rejected}) == 1
    assert len(outcome.rounds) == 3  # the rounds went on with the two good replies
    assert all(np.isfinite(a.numpy()).all() for a in outcome.result.arrays.values())
    reasons = " | ".join(r["reason"] for r in rejected)
    expected = {"nan": "NaN or Inf", "shape": "has shape", "extra": "extra ['intruder']",
                "truncate": "::q", "tag": "codec"}
    for word in how.values():
        assert expected[word] in reasons
    # Each rejected reply still crossed the wire: the books keep its row.
    node = rejected[0]["node-id"]
    assert all(any(r.node_id == node and r.round == rnd and r.direction == "up"
                   for r in outcome.books.rows) for rnd in (1, 2, 3))
