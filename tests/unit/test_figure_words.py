"""The figures agree with themselves: comparisons say "fewer" only where
there are fewer, the estimate is exact or a range the measurement lies in for every codec,
and a resume estimates each round under the config it ran with. The whole runs:
``simulation/test_figures.py``."""

from __future__ import annotations

import numpy as np
import pytest

from fedvit.codecs.payload import encode, encoded_bytes
from fedvit.codecs.spec import CodecSpec
from fedvit.config.appconfig import AppConfig
from server_app.summary import Estimated, estimate, estimate_words, message_tensor_bytes
from tools.sizes import ExchangeSize, format_report
from tools.words import times


def _size(strategy: str, content: int) -> ExchangeSize:
    return ExchangeSize(strategy, 1000, 100, 2, content, content, 8, content, 6,
                        {c: content for c in ("fp16", "bf16", "int8", "int4", "topk:0.1")})


def test_sizes_with_lora_moving_more_bytes_says_more():
    cfg = AppConfig.from_run_config({"lora-r": 256})
    text = format_report(cfg, 10, [_size("fedavg", 2_000_000), _size("fedlora", 2_997_100)])
    assert "149.855% of the bytes (1.5x more)" in text and "fewer" not in text


def test_times_words_match_the_numbers():
    assert times(1, 230) == "230x fewer" and times(2, 3) == "1.5x fewer"
    assert times(3, 2) == "1.5x more" and times(5, 5) == "the same"


@pytest.mark.parametrize("spec", ["none", "fp16", "bf16", "int8", "int8:7", "int4", "int4:6",
                                  "topk", "topk:0.01", "topk:0.5", "topk:1"])
def test_estimated_message_bytes_hold_for_any_values(spec):
    """Exact for every codec but top-k; top-k's bytes lie in the range, whatever the
    values put in the top k (clustered indices: one-byte gaps; spread: wider ones)."""
    rng = np.random.default_rng(0)
    shapes = {"a": (300,), "b": (40, 70), "c": (3,), "d": (1,)}
    first = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    least, most = message_tensor_bytes(first, CodecSpec.parse(spec))
    seen = set()
    for trial in range(30):
        arrays = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
        if trial % 3 == 1:  # the largest values clustered at the start
            arrays = {k: (np.linspace(9, 1, v.size) * (np.arange(v.size) < v.size // 10)
                          + 0.01 * v.ravel()).reshape(v.shape).astype(np.float32)
                      for k, v in arrays.items()}
        got = encoded_bytes(encode(CodecSpec.parse(spec), arrays)) if spec != "none" else (
            sum(a.nbytes for a in arrays.values()))
        seen.add(got)
        assert least <= got <= most
    if not spec.startswith("topk"):
        assert least == most
    if spec == "topk:0.01":
        assert len(seen) > 1  # top-k's bytes do depend on the values


def test_a_resumed_estimate_keeps_the_earlier_rounds_as_they_ran():
    arrays = {"w": np.zeros(100, np.float32)}
    before = AppConfig.from_run_config({"num-server-rounds": 1, "fraction-evaluate": 0.0})
    first = estimate(arrays, 2, before)
    after = AppConfig.from_run_config({"num-server-rounds": 3, "fraction-evaluate": 1.0})
    resumed = estimate(arrays, 2, after, Estimated.from_row(first.through(1).as_row()))
    assert resumed.down == 400 * 2 * 1 + 400 * 4 * 2 and resumed.up == 400 * 2 * 3
    assert resumed.through(3) == Estimated(3, resumed.down, resumed.up, resumed.up_min)
    assert resumed.matches(resumed.down, resumed.up) and not resumed.matches(400 * 4 * 3,
                                                                             resumed.up)


def test_the_end_of_run_words_match_the_comparison():
    exact = estimate({"w": np.zeros(62_500, np.float32)}, 2,
                     AppConfig.from_run_config({"num-server-rounds": 4,
                                                "fraction-evaluate": 0.0})).as_row()
    assert estimate_words(exact, True, 4) == "2.000 / 2.000: exact match"
    assert estimate_words(exact, True, 1) == "for rounds 1-1 of 4 0.500 / 0.500: exact match"
    assert estimate_words(exact, False, 4) == ("2.000 / 2.000: DIFFERENT (estimated bytes "
                                               "2,000,000 / 2,000,000)")
    topk = estimate({"w": np.zeros(62_500, np.float32)}, 2,
                    AppConfig.from_run_config({"num-server-rounds": 4, "codec-up": "topk",
                                               "fraction-evaluate": 0.0})).as_row()
    assert estimate_words(topk, True, 4).endswith("down exact, up within the range")
    assert "(top-k's index encoding depends on the values)" in estimate_words(topk, True, 4)
    assert "OUTSIDE the range" in estimate_words(topk, False, 4)
