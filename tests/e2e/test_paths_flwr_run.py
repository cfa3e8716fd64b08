"""Relative paths under `flwr run .`: the app runs from its install folder
there, so each path-valued key refuses a relative path with the same message as in-process,
and nothing is written (the in-process side is in test_faults.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fedvit.config.appconfig import APP_ROOT
from managed import flwr_env, stop_superlink
from simulate import RELATIVE


def test_relative_paths_refused_under_flwr_run(tmp_path):
    home, env = flwr_env(tmp_path)
    venv_bin = Path(sys.executable).parent
    run_config = " ".join(f"{k}='{v}'" for k, v in RELATIVE.items())
    try:
        proc = subprocess.run(
            [str(venv_bin / "flwr"), "run", str(APP_ROOT), "--stream", "--run-config",
             run_config], cwd=tmp_path, env=env, text=True, capture_output=True, timeout=400)
    finally:
        stop_superlink(home)
    log = proc.stdout + proc.stderr
    for key, value in RELATIVE.items():
        assert (f"'{key}' = '{value}' is not allowed: a relative path is taken from another "
                "folder under `flwr run`") in log, log[-3000:]
    assert "pass an absolute path or ~/..." in log
    written = [p for p in (home / "apps").rglob("rel-out")] if (home / "apps").exists() else []
    assert written == [] and not (tmp_path / "rel-out").exists()
