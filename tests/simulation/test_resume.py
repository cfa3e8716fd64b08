"""Checkpoints and resume (with seeded sampling); a client whose frozen backbone differs
refuses to train."""

from __future__ import annotations

import json

import numpy as np
import pytest

from server_app.recorder import load_checkpoint
from server_app.summary import RunStopped
from simulate import FAST, client_app, simulate, stopped
from strategies.sampling import QUERY_PHASE


def _trained(outcome, server_round: int) -> list[int]:
    return sorted(int(c.metrics["partition-id"]) for c in outcome.timeline[server_round].clients
                  if c.phase == "train")


def test_a_resumed_sampled_run_ends_like_an_uninterrupted_one(tmp_path):
    """Same seed, same run, also when only some nodes train, and a run
    resumed from its round-1 checkpoint in a fresh federation ends like the uninterrupted
    one: the same partitions trained, the same tensors, the same books by round."""
    base = {**FAST, "strategy": "fedlora", "fraction-train": 0.5, "learning-rate": 0.005,
            "outputs-dir": str(tmp_path)}
    full = simulate({**base, "run-name": "full"}, num_nodes=4)
    # A run that stopped after round 1 (its folder holds the round-1 checkpoint) ...
    part = simulate({**base, "num-server-rounds": 1, "run-name": "part"}, num_nodes=4)
    assert load_checkpoint(part.run_dir).round == 1
    # ... resumed in a fresh federation, goes on at round 2 in the same folder.
    resumed = simulate({**base, "resume-from": str(part.run_dir)}, num_nodes=4)
    assert resumed.run_dir == part.run_dir
    # The resume kept the first config and appended its own to the history.
    first = json.loads((part.run_dir / "config.json").read_text())
    assert first["num-server-rounds"] == 1 and first["resume-from"] == ""
    history = json.loads((part.run_dir / "configs.json").read_text())
    assert [(h["after-round"], h["config"]["num-server-rounds"]) for h in history] == [
        (0, 1), (1, 2)]
    assert [r["round"] for r in resumed.rounds] == [1, 2]
    # Seeded sampling: half the nodes, the same partitions in both runs.
    assert _trained(full, 1) == _trained(part, 1) and len(_trained(full, 1)) == 2
    assert _trained(full, 2) == _trained(resumed, 2) and len(_trained(full, 2)) == 2
    for rnd in (1, 2):  # a sampled-out node has no rows
        rows = [r for r in full.books.rows if (r.round, r.phase) == (rnd, "train")]
        down = {r.node_id for r in rows if r.direction == "down"}
        assert len(down) == 2 and {r.node_id for r in rows if r.direction == "up"} == down
    assert full.summary["estimate"]["train-clients"] == 2
    for key in ("central-accuracy", "central-loss", "train-loss"):
        assert part.rounds[0][key] == full.rounds[0][key], key
    for key, arr in full.result.arrays.items():
        assert np.array_equal(arr.numpy(), resumed.result.arrays[key].numpy()), key

    def book(outcome):  # node ids differ between federations; sizes by round do not
        return sorted((r.round, r.phase, r.direction, r.tensor_bytes, r.status)
                      for r in outcome.books.rows if r.phase != QUERY_PHASE)

    assert book(resumed) == book(full)
    msg_full = sum(r.message_bytes for r in full.books.rows if r.phase != QUERY_PHASE)
    msg_resumed = sum(r.message_bytes for r in resumed.books.rows if r.phase != QUERY_PHASE)
    assert abs(msg_full - msg_resumed) <= 4 * len(full.books.rows)  # node-id varints
    # The partition queries are booked: one small message each way per node, once per
    # federation (the resumed one's fresh nodes are asked again, in its first round; its
    # books go on from the checkpoint's).
    for outcome, asked in ((full, [1]), (resumed, [1, 2])):
        query = [r for r in outcome.books.rows if r.phase == QUERY_PHASE]
        assert sorted((r.round, r.direction, r.tensor_bytes, r.status) for r in query) == (
            sorted([(rnd, d, 0, "ok") for rnd in asked for d in ("down", "up")] * 4))
        assert all(r.message_bytes > 0 for r in query) and outcome.books.mismatches == []
    summary = json.loads((resumed.run_dir / "summary.json").read_text())
    assert summary["estimate-matches-tensor-bytes"] and summary["rounds"] == 2
    assert full.summary["estimate-matches-tensor-bytes"]


def test_client_with_another_backbone_refuses(tmp_path):
    """Every node refuses the same way, so the run stops after round 1 with that reason
    instead of repeating it."""
    server = {**FAST, "strategy": "fedlora", "outputs-dir": str(tmp_path), "run-name": "bb"}
    err = stopped(server, client=client_app({**server, "seed": 7}))
    assert isinstance(err, RunStopped) and "(nothing-aggregated) after rounds []" in str(err)
    assert "frozen backbone fingerprint" in str(err)
    books = json.loads((tmp_path / "bb" / "summary.json").read_text())
    assert books["unaggregated-rounds"] == [1] and books["bytes"]["up-tensor"] == 0


@pytest.mark.parametrize("value", ["/no/such/run"])
def test_resume_from_a_missing_folder_is_a_config_error(value):
    from fedvit.config.appconfig import AppConfig, ConfigError
    from fedvit.config.resume import validate_server

    with pytest.raises(ConfigError, match="'resume-from' = '/no/such/run' is not allowed: "
                                          "/no/such/run holds no checkpoint"):
        validate_server(AppConfig.from_run_config({"resume-from": value}))
