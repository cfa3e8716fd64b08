"""The offline default (pretrained public backbone, digits) reaches >= 90 % both ways."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedvit.config import APP_ROOT
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


def _stop_superlinks(flwr_home: Path) -> None:
    """Kill the managed SuperLink this test started (and its children) by PID."""
    out = subprocess.run(["pgrep", "-f", f"flower-superlink.*{flwr_home}"], text=True,
                         capture_output=True).stdout
    for pid in map(int, out.split()):
        try:
            os.killpg(os.getpgid(pid), signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    time.sleep(1)


def test_flwr_run_local_simulation_end_to_end(tmp_path):
    """README's path: `flwr run . local-simulation` on a managed SuperLink, offline."""
    config = APP_ROOT / ".flwr" / "config.toml"
    if not config.is_file():
        pytest.skip("run scripts/setup.sh first (it writes .flwr/config.toml)")
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(config.read_text())
    out = tmp_path / "outputs"
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{venv_bin}:{os.environ['PATH']}",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    before = _git_status()
    try:
        proc = subprocess.run(
            [str(venv_bin / "flwr"), "run", ".", "local-simulation", "--stream",
             "--run-config", f"num-server-rounds=2 outputs-dir='{out}'"],
            cwd=APP_ROOT, env=env, text=True, capture_output=True, timeout=600,
        )
    finally:
        _stop_superlinks(home)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    runs = list(out.iterdir())
    assert len(runs) == 1
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["rounds"] == 2
    assert summary["estimate"]["num_nodes"] == 4  # the connection's num-supernodes
    assert summary["final-central-accuracy"] >= 0.85
    assert "fedvit: round 2/2 | central acc" in log
    assert _git_status() == before  # no tracked file rewritten
