"""Relative paths under `flwr run .` (issue 13, item 2): the app runs from its install folder
there, so each path-valued key refuses a relative path with the same message as in-process,
and nothing is written (the in-process side is in test_faults.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_faults import RELATIVE

from fedvit.config import APP_ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_superlink(flwr_home: Path) -> None:
    """Stop the managed SuperLink this test started: its log file is under ``flwr_home``."""
    out = subprocess.run(["pgrep", "-f", f"flower-superlink.*{flwr_home}/local-superlink/"],
                         text=True, capture_output=True).stdout
    for pid in map(int, out.split()):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    time.sleep(1)


def test_relative_paths_refused_under_flwr_run(tmp_path):
    config = APP_ROOT / ".flwr" / "config.toml"
    if not config.is_file():
        pytest.skip("run scripts/setup.sh first (it writes .flwr/config.toml)")
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(config.read_text())
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{venv_bin}:{os.environ['PATH']}",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(_free_port()),
           "FLWR_LOCAL_CONTROL_API_PORT": str(_free_port())}
    run_config = " ".join(f"{k}='{v}'" for k, v in RELATIVE.items())
    try:
        proc = subprocess.run(
            [str(venv_bin / "flwr"), "run", str(APP_ROOT), "--stream", "--run-config",
             run_config], cwd=tmp_path, env=env, text=True, capture_output=True, timeout=400)
    finally:
        _stop_superlink(home)
    log = proc.stdout + proc.stderr
    for key, value in RELATIVE.items():
        assert (f"'{key}' = '{value}' is not allowed: a relative path is taken from another "
                "folder under `flwr run`") in log, log[-3000:]
    assert "pass an absolute path or ~/..." in log
    written = [p for p in (home / "apps").rglob("rel-out")] if (home / "apps").exists() else []
    assert written == [] and not (tmp_path / "rel-out").exists()
