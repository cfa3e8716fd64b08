"""Codecs: round-trip error bounds, exact byte counts, error feedback, rejection, ratios."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedvit.codecs.payload import (
    INDEX_ENCODINGS,
    CodecError,
    ErrorFeedback,
    decode,
    encode,
    encoded_bytes,
)
from fedvit.codecs.spec import CODECS, CodecSpec, topk_count


def header_bytes(ndim: int) -> int:
    """``K::meta``: uint32 [version, codec, dtype, aux, ndim, *shape]."""
    return 4 * (5 + ndim)


def distinct(n: int, seed: int = 0, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Values with pairwise distinct magnitudes (no top-k ties), random order and signs."""
    rng = np.random.default_rng(seed)
    mags = rng.permutation(np.arange(1, n + 1, dtype=np.float32)) / n
    x = (mags * rng.choice([-1.0, 1.0], n)).astype(np.float32)
    return x.reshape(shape or (n,))


def vit_b_lora_update(seed: int = 0) -> dict[str, np.ndarray]:
    """Trainables of ViT-B/16, LoRA r=8 on qkv (12 blocks) + a 100-class head."""
    rng = np.random.default_rng(seed)
    shapes = {}
    for i in range(12):
        prefix = f"base_model.model.blocks.{i}.attn.qkv"
        shapes[f"{prefix}.lora_A.default.weight"] = (8, 768)
        shapes[f"{prefix}.lora_B.default.weight"] = (2304, 8)
    shapes["base_model.model.head.weight"] = (100, 768)
    shapes["base_model.model.head.bias"] = (100,)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def blocks_of(x: np.ndarray, bs: int) -> list[np.ndarray]:
    flat = x.reshape(-1)
    return [flat[i:i + bs] for i in range(0, flat.size, bs)]


# --- spec ---------------------------------------------------------------------------------


def test_spec_validation_names_field_value_and_rule():
    for spec, words in [
        (CodecSpec("gzip"), ("name", "'gzip'", "fp16")),
        (CodecSpec("int4", block_size=3), ("block_size", "3", "even")),
        (CodecSpec("int8", block_size=0), ("block_size", "0", "[1,")),
        (CodecSpec("topk", topk_fraction=0.0), ("topk_fraction", "0.0", "0 < topk_fraction <= 1")),
        (CodecSpec("topk", topk_fraction=1.5), ("topk_fraction", "1.5", "<= 1")),
    ]:
        with pytest.raises(ValueError) as err:
            spec.validate()
        assert all(w in str(err.value) for w in words), str(err.value)
    assert CodecSpec("int8", block_size=1).validate().block_size == 1
    assert CodecSpec.parse("topk:0.05") == CodecSpec("topk", topk_fraction=0.05)
    assert CodecSpec.parse("int4:64") == CodecSpec("int4", block_size=64)
    assert CodecSpec.parse("bf16") == CodecSpec("bf16")
    for bad in ("fp16:3", "int4:7", "topk:x", "lz4"):
        with pytest.raises(ValueError):
            CodecSpec.parse(bad)
    assert topk_count(30, 0.1) == 3 and topk_count(1000, 0.1) == 100 and topk_count(1, 0.01) == 1


# --- round trips --------------------------------------------------------------------------


def test_none_fp16_bf16_round_trip():
    x = np.random.default_rng(1).standard_normal((37, 29)).astype(np.float32)
    assert np.array_equal(decode(encode("none", {"w": x}))["w"], x)
    for name, rel in (("fp16", 2.0**-11), ("bf16", 2.0**-8)):
        y = decode(encode(name, {"w": x}))["w"]
        assert y.dtype == np.float32 and y.shape == x.shape
        assert np.all(np.abs(y - x) <= rel * np.abs(x)), name
    # bf16 bits are exactly torch's round-to-nearest-even conversion, NaN/inf included
    torch = pytest.importorskip("torch")
    z = np.concatenate([x.ravel(), [np.inf, -np.inf, np.nan, 3.4e38, 1e-40, 0.0, -0.0]])
    z = z.astype(np.float32)
    got = encode("bf16", {"z": z})["z::val"]
    want = torch.from_numpy(z).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    finite = ~np.isnan(z)
    assert np.array_equal(got[finite], want[finite])
    assert np.isnan(decode(encode("bf16", {"z": z}))["z"][~finite]).all()


@pytest.mark.parametrize("name,qmax", [("int8", 127), ("int4", 7)])
@pytest.mark.parametrize("block", [64, 128, 2])
def test_blockwise_quantisation_error_bound(name, qmax, block):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(2501) * np.repeat(10.0 ** rng.uniform(-4, 2, 40), 63)[:2501])
    x = x.astype(np.float32).reshape(41, 61)  # odd size: partial last block, odd nibble count
    enc = encode(CodecSpec(name, block_size=block), {"w": x})
    y = decode(enc)["w"]
    assert y.dtype == np.float32 and y.shape == x.shape
    scales = enc["w::scale"].astype(np.float64)
    assert scales.size == math.ceil(x.size / block)
    for xb, yb, s in zip(blocks_of(x, block), blocks_of(y, block), scales, strict=True):
        amax = float(np.abs(xb.astype(np.float64)).max())
        err = np.abs(xb.astype(np.float64) - yb.astype(np.float64)).max()
        # the fp16 scale is rounded up: relative 2^-10, or 2^-24 absolute when subnormal
        assert amax / qmax <= s <= amax / qmax * (1 + 2.0**-10) + 2.0**-24
        assert err <= s / 2  # exact: q*s is exact in float32
        assert err <= amax / (2 * qmax) * (1 + 2.0**-10) + 2.0**-25
    if name == "int4":
        assert enc["w::q"].dtype == np.uint8 and enc["w::q"].size == math.ceil(x.size / 2)


def test_zero_blocks_and_edge_shapes():
    for name in CODECS:
        tensors = {"zero": np.zeros(300, np.float32), "empty": np.zeros((0, 5), np.float32),
                   "scalar": np.array(2.5, np.float32), "one": np.array([-1.25], np.float32)}
        out = decode(encode(name, tensors))
        for k, v in tensors.items():
            assert out[k].shape == v.shape and out[k].dtype == np.float32
            exact = name in ("none", "fp16", "bf16") or not v.any()
            np.testing.assert_allclose(out[k], v, rtol=0 if exact else 1 / 14, err_msg=name)


def test_original_dtype_is_recorded():
    x64 = np.linspace(-1, 1, 10)
    x16 = np.linspace(-1, 1, 10).astype(np.float16)
    out = decode(encode("fp16", {"a": x64, "b": x16}), restore_dtype=True)
    assert out["a"].dtype == np.float64 and out["b"].dtype == np.float16
    assert decode(encode("fp16", {"a": x64}))["a"].dtype == np.float32
    with pytest.raises(ValueError, match="dtype"):
        encode("int8", {"i": np.arange(4)})
    with pytest.raises(ValueError, match="non-finite"):
        encode("int8", {"w": np.array([1.0, np.inf], np.float32)})


def test_topk_keeps_exactly_the_largest():
    x = distinct(1000, seed=3, shape=(10, 100))
    for fraction in (0.1, 0.013, 0.5, 1.0):
        k = math.ceil(round(fraction * 1000, 9))
        y = decode(encode(CodecSpec("topk", topk_fraction=fraction), {"w": x}))["w"]
        assert y.shape == x.shape and np.count_nonzero(y) == k
        kept = np.zeros(x.size, bool)
        kept[np.argsort(-np.abs(x), axis=None)[:k]] = True
        kept = kept.reshape(x.shape)
        assert np.all(y[~kept] == 0)
        assert np.all(np.abs(y[kept] - x[kept]) <= 2.0**-11 * np.abs(x[kept]))
        assert np.array_equal(y[kept], x[kept].astype(np.float16).astype(np.float32))


# --- exact byte counts --------------------------------------------------------------------


def test_exact_encoded_bytes_for_a_1000_element_tensor():
    x = distinct(1000, seed=4, shape=(10, 100))
    h = header_bytes(2)  # 28 bytes
    expected = {
        CodecSpec("none"): 4000 + h,
        CodecSpec("fp16"): 2000 + h,
        CodecSpec("bf16"): 2000 + h,
        CodecSpec("int8", block_size=64): 1000 + 16 * 2 + h,  # 16 blocks, fp16 scale each
        CodecSpec("int8"): 1000 + 8 * 2 + h,  # default block 128: 8 blocks
        CodecSpec("int4", block_size=64): 500 + 16 * 2 + h,
        CodecSpec("int4"): 500 + 8 * 2 + h,
        CodecSpec("int4", block_size=1000): 500 + 1 * 2 + h,
    }
    for spec, want in expected.items():
        enc = encode(spec, {"w": x})
        assert encoded_bytes(enc) == want, spec
        assert sum(a.dtype.itemsize * a.size for a in enc.values()) == want


def test_topk_index_encoding_is_the_smallest_option():
    n = 1000
    # top 100 at every 10th position: gaps of 9 -> uint8 gaps (100 B) beat the bitmap (125 B)
    x = np.full(n, 0.001, np.float32)
    x[::10] = np.arange(1, 101)
    enc = encode(CodecSpec("topk", topk_fraction=0.1), {"w": x})
    assert INDEX_ENCODINGS[enc["w::meta"][3]] == "gap-u8" and enc["w::idx"].dtype == np.uint8
    assert encoded_bytes(enc) == 100 * 2 + 100 * 1 + header_bytes(1)
    # one gap of 899 > 255 would need uint16 gaps (200 B): the bitmap (125 B) is smaller
    x = np.full(n, 0.001, np.float32)
    x[:100] = np.arange(1, 101)
    x[99], x[999] = 0.001, 5.0
    enc = encode(CodecSpec("topk", topk_fraction=0.1), {"w": x})
    assert INDEX_ENCODINGS[enc["w::meta"][3]] == "bitmap"
    assert encoded_bytes(enc) == 100 * 2 + 125 + header_bytes(1)
    # sparse: 10 of 100000 with a gap > 255 -> uint16 (20 B) beats uint32 (40 B) and bitmap
    x = np.full(100_000, 0.001, np.float32)
    x[np.arange(10) * 5000] = np.arange(1, 11)
    enc = encode(CodecSpec("topk", topk_fraction=1e-4), {"w": x})
    assert INDEX_ENCODINGS[enc["w::meta"][3]] == "gap-u16"
    assert encoded_bytes(enc) == 10 * 2 + 10 * 2 + header_bytes(1)
    # a gap > 65535 -> uint32
    x = np.full(200_000, 0.001, np.float32)
    x[[0, 150_000]] = 1.0
    enc = encode(CodecSpec("topk", topk_fraction=1e-5), {"w": x})
    assert INDEX_ENCODINGS[enc["w::meta"][3]] == "gap-u32"
    assert encoded_bytes(enc) == 2 * 2 + 2 * 4 + header_bytes(1)
    # half kept: bitmap (125 B) beats 500 uint8 gaps
    enc = encode(CodecSpec("topk", topk_fraction=0.5), {"w": distinct(n)})
    assert INDEX_ENCODINGS[enc["w::meta"][3]] == "bitmap"
    assert encoded_bytes(enc) == 500 * 2 + 125 + header_bytes(1)
    assert np.count_nonzero(decode(enc)["w"]) == 500


def test_keys_are_deterministic_and_in_input_order():
    t = {"b": distinct(300, 5), "a": distinct(70, 6)}
    for name in CODECS:
        k1, k2 = list(encode(name, t)), list(encode(name, dict(t)))
        assert k1 == k2 and k1[0] == "b::meta" and list(decode(encode(name, t))) == ["b", "a"]
    assert list(encode("int4", t)) == ["b::meta", "b::q", "b::scale", "a::meta", "a::q", "a::scale"]
    assert list(encode("topk", t)) == ["b::meta", "b::idx", "b::val", "a::meta", "a::idx", "a::val"]


def test_payload_survives_a_flower_array_record_and_wire_counts_the_same():
    from flwr.app import Array, ArrayRecord, RecordDict

    from fedvit.wire.measure import tensor_bytes

    tensors = {"x::weird.key": distinct(777, 7, (7, 111)), "b": distinct(5, 8)}
    for name in CODECS:
        enc = encode(name, tensors)
        record = ArrayRecord(array_dict={k: Array(v) for k, v in enc.items()})
        assert tensor_bytes(RecordDict({"p": record})) == encoded_bytes(enc)
        back = {k: record[k].numpy() for k in record.keys()}
        out, ref = decode(back), decode(enc)
        assert all(np.array_equal(out[k], ref[k]) for k in tensors)


# --- error feedback -----------------------------------------------------------------------


def _round(ef: ErrorFeedback, x: dict, spec: CodecSpec) -> tuple[dict, dict]:
    sent = ef.compensate(x)
    dec = decode(encode(spec, sent))
    ef.update(sent, dec)
    return sent, dec


def test_error_feedback_residual_is_exactly_what_was_not_sent():
    spec = CodecSpec("topk", topk_fraction=0.1)
    rng = np.random.default_rng(9)
    x1 = {"w": rng.standard_normal((50, 40)).astype(np.float32)}
    x2 = {"w": rng.standard_normal((50, 40)).astype(np.float32)}
    ef = ErrorFeedback()
    sent1, d1 = _round(ef, x1, spec)
    assert np.array_equal(sent1["w"], x1["w"])  # no residual yet
    r1 = ef.residual["w"]
    assert np.array_equal(r1, x1["w"] - d1["w"])
    assert np.array_equal(d1["w"] + r1, x1["w"])  # fp16 rounding of sent values is in r1
    dropped = d1["w"] == 0
    assert np.array_equal(r1[dropped], x1["w"][dropped])
    assert np.all(np.abs(r1[~dropped]) <= 2.0**-11 * np.abs(x1["w"][~dropped]))
    # state round-trips through plain arrays (e.g. context.state)
    ef = ErrorFeedback(ef.to_arrays())
    sent2, d2 = _round(ef, x2, spec)
    assert np.array_equal(sent2["w"], x2["w"] + r1)
    assert np.array_equal(d2["w"] + ef.residual["w"], sent2["w"])
    # over two rounds: Σ decoded + residual == Σ inputs, up to the fp32 rounding of x2 + r1
    total = d1["w"].astype(np.float64) + d2["w"] + ef.residual["w"]
    np.testing.assert_allclose(total, x1["w"].astype(np.float64) + x2["w"], rtol=0, atol=1e-6)


def test_error_feedback_telescopes_exactly_on_a_dyadic_grid():
    # multiples of 2^-8 below 8 in magnitude: exact in fp16, and every fp32 sum is exact
    rng = np.random.default_rng(10)
    xs = [{"w": (rng.integers(-1000, 1000, 600) / 256).astype(np.float32)} for _ in range(3)]
    ef, decoded = ErrorFeedback(), []
    for x in xs:
        decoded.append(_round(ef, x, CodecSpec("topk", topk_fraction=0.05))[1]["w"])
    assert np.array_equal(sum(decoded) + ef.residual["w"], sum(x["w"] for x in xs))
    with pytest.raises(ValueError, match="shape"):
        ef.compensate({"w": np.zeros(5, np.float32)})


# --- rejection ----------------------------------------------------------------------------


def _expect_codec_error(enc: dict, *words: str) -> None:
    with pytest.raises(CodecError) as err:
        decode(enc)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_malformed_payloads_are_rejected_with_the_key_named():
    x = {"layer.w": distinct(1000, 11, (10, 100))}
    good = encode("int8", x)
    _expect_codec_error({**good, "layer.w::q": good["layer.w::q"][:-1]},
                        "'layer.w::q'", "999", "1000")
    meta = good["layer.w::meta"].copy()
    meta[1] = 42
    _expect_codec_error({**good, "layer.w::meta": meta}, "'layer.w::meta'", "codec tag 42")
    meta = good["layer.w::meta"].copy()
    meta[5:] = [10, 10]  # header shape (10, 10) vs 1000 elements
    _expect_codec_error({**good, "layer.w::meta": meta}, "'layer.w::q'", "(10, 10)", "1000")
    for missing in ("layer.w::scale", "layer.w::meta"):
        _expect_codec_error({k: v for k, v in good.items() if k != missing},
                            f"missing key '{missing}'")
    _expect_codec_error({**good, "layer.w::idx": np.zeros(3, np.uint8)}, "'layer.w::idx'")
    _expect_codec_error({**good, "stray": np.zeros(1)}, "'stray'")
    _expect_codec_error({**good, "layer.w::q": good["layer.w::q"].astype(np.int16)},
                        "'layer.w::q'", "int8")
    meta = good["layer.w::meta"].copy()
    meta[2] = 9
    _expect_codec_error({**good, "layer.w::meta": meta}, "'layer.w::meta'", "dtype code 9")
    _expect_codec_error({**good, "layer.w::meta": good["layer.w::meta"][:4]}, "'layer.w::meta'")
    # int4: truncated packed nibbles; topk: truncated indices/values, out-of-range index
    g4 = encode("int4", x)
    _expect_codec_error({**g4, "layer.w::q": g4["layer.w::q"][:-1]}, "'layer.w::q'", "499", "500")
    gk = encode("topk", x)
    _expect_codec_error({**gk, "layer.w::idx": gk["layer.w::idx"][:-1]}, "'layer.w::idx'")
    _expect_codec_error({**gk, "layer.w::val": gk["layer.w::val"][:-1]}, "'layer.w::val'")
    idx = gk["layer.w::idx"].copy()
    idx[-1] = 255
    _expect_codec_error({**gk, "layer.w::idx": idx}, "'layer.w::idx'", "1000 elements")
    meta = gk["layer.w::meta"].copy()
    meta[3] = 7
    _expect_codec_error({**gk, "layer.w::meta": meta}, "'layer.w::meta'", "index encoding 7")


# --- ratio targets ------------------------------------------------------------------------


def test_ratio_targets_for_a_vit_b_lora_update():
    update = vit_b_lora_update()
    fp32 = sum(v.nbytes for v in update.values())
    assert fp32 == 4 * (12 * (8 * 768 + 2304 * 8) + 100 * 768 + 100)
    targets = {"int8": 0.255, "int4": 0.13, "topk": 0.12, "fp16": 0.51, "bf16": 0.51,
               "none": 1.001}
    ratios = {}
    for name, limit in targets.items():
        enc = encode(name, update)
        ratios[name] = encoded_bytes(enc) / fp32
        assert ratios[name] <= limit, (name, ratios[name])
        out = decode(enc)
        assert all(out[k].shape == v.shape for k, v in update.items())
    print({k: f"{100 * v:.2f}%" for k, v in ratios.items()})
