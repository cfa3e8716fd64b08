"""Checkpoints and resume; a client whose frozen backbone differs refuses to train."""

from __future__ import annotations

import json

import numpy as np
import pytest

from server_app.checkpoint import has_checkpoint
from simulate import FAST, client_app, simulate


def test_resumed_run_ends_like_an_uninterrupted_one(tmp_path):
    base = {**FAST, "strategy": "fedlora", "learning-rate": 0.005, "outputs-dir": str(tmp_path)}
    full = simulate({**base, "run-name": "full"})
    # A run that stopped after round 1 (its folder holds the round-1 checkpoint) ...
    part = simulate({**base, "num-server-rounds": 1, "run-name": "part"})
    assert has_checkpoint(part.run_dir)
    # ... resumed in a fresh federation, goes on at round 2 in the same folder.
    resumed = simulate({**base, "resume-from": str(part.run_dir)})
    assert resumed.run_dir == part.run_dir
    # The resume kept the first config and appended its own to the history.
    first = json.loads((part.run_dir / "config.json").read_text())
    assert first["num-server-rounds"] == 1 and first["resume-from"] == ""
    history = json.loads((part.run_dir / "configs.json").read_text())
    assert [(h["after-round"], h["config"]["num-server-rounds"]) for h in history] == [
        (0, 1), (1, 2)]
    assert [r["round"] for r in resumed.rounds] == [1, 2]
    for key, arr in full.result.arrays.items():
        assert np.array_equal(arr.numpy(), resumed.result.arrays[key].numpy()), key

    def book(outcome):  # node ids differ between federations; sizes by round do not
        return sorted((r.round, r.phase, r.direction, r.tensor_bytes, r.status)
                      for r in outcome.books.rows)

    assert book(resumed) == book(full)
    msg_full = sum(r.message_bytes for r in full.books.rows)
    msg_resumed = sum(r.message_bytes for r in resumed.books.rows)
    assert abs(msg_full - msg_resumed) <= 4 * len(full.books.rows)  # node-id varints
    summary = json.loads((resumed.run_dir / "summary.json").read_text())
    assert summary["estimate-matches-tensor-bytes"] and summary["rounds"] == 2


def test_client_with_another_backbone_refuses(tmp_path):
    server = {**FAST, "strategy": "fedlora", "outputs-dir": str(tmp_path)}
    outcome = simulate(server, client=client_app({**server, "seed": 7}))
    up = [r for r in outcome.books.rows if r.direction == "up"]
    assert len(up) == 4 and all(r.status == "error" for r in up)
    assert all("frozen backbone fingerprint" in r.detail for r in up)
    for key, arr in outcome.initial_arrays.items():  # nothing was aggregated
        assert np.array_equal(arr.numpy(), outcome.result.arrays[key].numpy())


@pytest.mark.parametrize("value", ["/no/such/run"])
def test_resume_from_a_missing_folder_is_a_config_error(value):
    from fedvit.config import AppConfig, ConfigError
    from fedvit.resume import validate_server

    with pytest.raises(ConfigError, match="'resume-from' = '/no/such/run' is not allowed: "
                                          "/no/such/run holds no checkpoint"):
        validate_server(AppConfig.from_run_config({"resume-from": value}))
