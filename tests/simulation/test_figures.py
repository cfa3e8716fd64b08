"""The figures agree with themselves: the estimate of a resumed run
follows the config each round ran with, and a top-k upload's estimate is a range the
measurement lies in, so "exact match" / "DIFFERENT" is never said wrongly."""

from __future__ import annotations

import json

from simulate import FAST, simulate


def test_resume_with_fraction_evaluate_changed_estimates_each_round_under_its_config(
        tmp_path):
    base = {**FAST, "outputs-dir": str(tmp_path), "fraction-evaluate": 0.0}
    first = simulate({**base, "num-server-rounds": 1, "run-name": "r"})
    assert first.summary["estimate-matches-tensor-bytes"]
    resumed = simulate({**base, "num-server-rounds": 2, "fraction-evaluate": 1.0,
                        "resume-from": str(first.run_dir)})
    est, measured = resumed.summary["estimate"], resumed.summary["bytes"]
    assert (est["down"], est["up"]) == (measured["down-tensor"], measured["up-tensor"])
    assert resumed.summary["estimate-matches-tensor-bytes"] is True
    assert est["earlier-rounds"] == 1 and est["evaluate-clients"] == 2
    per_msg = est["down-bytes-per-message"]
    assert est["down"] == per_msg * 2 + per_msg * (2 + 2)  # round 1: train only; 2: both
    saved = json.loads((first.run_dir / "checkpoint.json").read_text())["estimated"]
    assert saved["rounds"] == 2 and saved["down"] == est["down"]


def test_top_k_upload_lies_in_the_estimated_range(tmp_path):
    outcome = simulate({**FAST, "outputs-dir": str(tmp_path), "codec-up": "topk:0.1"})
    est, up = outcome.summary["estimate"], outcome.summary["bytes"]["up-tensor"]
    assert est["up-min"] <= up <= est["up"] and est["up-min"] < est["up"]
    assert outcome.summary["estimate-matches-tensor-bytes"] is True
