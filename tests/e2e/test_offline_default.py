"""The offline default (pretrained public backbone, digits) reaches >= 90 % both ways."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedvit.config.appconfig import APP_ROOT
from managed import flwr_env, stop_superlink
from simulate import simulate


@pytest.mark.parametrize("strategy", ["fedavg", "fedlora"])
def test_default_config_reaches_90_percent(strategy, tmp_path):
    outcome = simulate({"strategy": strategy, "outputs-dir": str(tmp_path)})
    assert outcome.summary["final-central-accuracy"] >= 0.90
    assert outcome.summary["estimate-matches-tensor-bytes"]
    assert outcome.books.mismatches == []


def _git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=APP_ROOT, text=True,
                          capture_output=True).stdout


def test_flwr_run_local_simulation_end_to_end(tmp_path):
    """README's path: `flwr run . local-simulation` on a managed SuperLink, offline."""
    home, env = flwr_env(tmp_path)
    out = tmp_path / "outputs"
    before = _git_status()
    try:
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "flwr"), "run", ".", "local-simulation", "--stream",
             "--run-config", f"num-server-rounds=2 outputs-dir='{out}'"],
            cwd=APP_ROOT, env=env, text=True, capture_output=True, timeout=600,
        )
    finally:
        stop_superlink(home)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    runs = list(out.iterdir())
    assert len(runs) == 1
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["rounds"] == 2
    assert summary["estimate"]["num-nodes"] == 4  # the connection's num-supernodes
    assert summary["final-central-accuracy"] >= 0.85
    assert "fedvit: round 2/2 | central acc" in log
    assert _git_status() == before  # no tracked file rewritten
