"""`flwr run` against a managed local SuperLink of the test's own: its Flower home, and
stopping exactly the SuperLink it started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedvit.config.appconfig import APP_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flwr_env(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A Flower home under ``tmp_path`` with the project's connections, and an environment
    whose managed SuperLink listens on ports of its own (skips without scripts/setup.sh)."""
    config = APP_ROOT / ".flwr" / "config.toml"
    if not config.is_file():
        pytest.skip("run scripts/setup.sh first (it writes .flwr/config.toml)")
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(config.read_text())
    venv_bin = Path(sys.executable).parent
    return home, {**os.environ, "FLWR_HOME": str(home),
                  "PATH": f"{venv_bin}:{os.environ['PATH']}",
                  "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                  "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
                  "FLWR_LOCAL_CONTROL_API_PORT": str(free_port())}


def stop_superlink(flwr_home: Path) -> None:
    """Stop the managed SuperLink started with ``flwr_home`` (and its process group)."""
    out = subprocess.run(["pgrep", "-f", f"flower-superlink.*{flwr_home}"], text=True,
                         capture_output=True).stdout
    for pid in map(int, out.split()):
        try:
            os.killpg(os.getpgid(pid), signal.SIGTERM)
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    time.sleep(1)
