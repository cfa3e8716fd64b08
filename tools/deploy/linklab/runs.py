"""The ``flwr`` CLI against a link lab's SuperLink, inside the SuperLink's namespace: the
``flwr run`` command line, a run driven to its end, any other ``flwr`` command, a run's
status."""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tools.deploy.linklab.netns import LinkLabError
from tools.deploy.linklab.network import LabNames
from tools.deploy.linklab.record import LabRecord
from tools.deploy.processes import terminate

CONNECTION = "linklab"
TAIL_LINES = 40
STARTED = re.compile(r"Successfully started run (\d+)")


def format_run_config(run_config: Mapping[str, bool | int | float | str]) -> str:
    """``{"a": 1, "b": "x", "c": True}`` -> ``a=1 b='x' c=true`` for ``flwr run --run-config``.

    Raises:
        LinkLabError: a key is not a bare TOML key, a value is of another type, or a string
            holds both quote characters.
    """
    parts = []
    for key, value in run_config.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
            raise LinkLabError(f"run-config key {key!r} is not a bare TOML key")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            text = str(value)
        elif isinstance(value, float):
            text = repr(value) if math.isfinite(value) else str(value).replace("infinity", "inf")
        elif isinstance(value, str):
            if "'" not in value and "\n" not in value:
                text = f"'{value}'"  # TOML literal string: no escapes
            elif '"' not in value:
                text = json.dumps(value)  # TOML basic string, JSON escapes are valid TOML
            else:
                raise LinkLabError(f"run-config value {value!r} holds both quote characters")
        else:
            raise LinkLabError(f"run-config value for {key!r} must be bool/int/float/str, "
                               f"got {type(value).__name__}")
        parts.append(f"{key}={text}")
    return " ".join(parts)


def log_tail(logs: Path, name: str, lines: int = 30) -> str:
    """The last ``lines`` lines of ``logs/<name>.log`` ("(no log)" if unreadable)."""
    try:
        text = (logs / f"{name}.log").read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class FlwrCli:
    """The lab's ``flwr``: its binary, environment and Flower home (``config.toml`` names
    the SuperLink as connection ``linklab``)."""

    names: LabNames
    bin_dir: Path
    env: Mapping[str, str]
    home: Path
    logs: Path
    workdir: Path
    record: LabRecord
    stop_timeout_s: float

    def command(self, app_dir: Path, run_config: Mapping | None = None) -> list[str]:
        """The ``flwr run`` command line for this lab, to be run in ``app_dir``."""
        argv = self.names.netns_exec(None) + [
            "env", f"FLWR_HOME={self.home}", "FLWR_TELEMETRY_ENABLED=0",
            "FLWR_DISABLE_UPDATE_CHECK=1",
            str(self.bin_dir / "flwr"), "run", str(app_dir), CONNECTION, "--stream"]
        if run_config:
            argv += ["--run-config", format_run_config(run_config)]
        return argv

    def next_log(self) -> Path:
        """Where the next ``run`` writes its output: ``logs/flwr-run-<n>.log``."""
        return self.logs / f"flwr-run-{sum(1 for _ in self.logs.glob('flwr-run-*.log'))}.log"

    def run(self, app_dir: Path, run_config: Mapping | None, timeout_s: float
            ) -> subprocess.CompletedProcess:
        """``flwr run <app_dir> linklab --stream``, logged to ``logs/flwr-run-<n>.log``.

        Returns:
            The CompletedProcess: stdout = the whole output, plus ``run_id``, ``status``
            and ``log_path``.

        Raises:
            LinkLabError: with the output's tail, when it fails, times out (the run is then
                stopped on the SuperLink), or the SuperLink does not report the run as
                ``finished:completed``.
        """
        app = Path(app_dir).resolve()
        name = self.next_log().stem
        argv = [str(self.bin_dir / "flwr"), "run", str(app), CONNECTION, "--stream"]
        if run_config:
            argv += ["--run-config", format_run_config(run_config)]
        log_path = self.logs / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(self.names.netns_exec(None) + argv, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, cwd=app,
                                    env={**self.env, "FLWR_HOME": str(self.home)},
                                    start_new_session=True)
        rec = self.record.add_popen(proc, name)
        try:
            returncode = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            if rec:
                terminate([rec], self.stop_timeout_s)
            proc.wait()
            started = STARTED.search(log_path.read_text(errors="replace"))
            if started:  # the run itself goes on without its CLI: stop it on the SuperLink
                self.cli("stop", started.group(1), CONNECTION)
            raise LinkLabError(f"`flwr run` timed out after {timeout_s:.0f} s ({log_path}):\n"
                               f"{log_tail(self.logs, name, TAIL_LINES)}") from None
        output = log_path.read_text(errors="replace")
        completed = subprocess.CompletedProcess(argv, returncode, output, "")
        if returncode != 0:
            raise LinkLabError(f"`flwr run` failed ({returncode}, {log_path}):\n"
                               f"{log_tail(self.logs, name, TAIL_LINES)}")
        match = STARTED.search(output)
        if not match:
            raise LinkLabError(f"`flwr run` started no run ({log_path}):\n"
                               f"{log_tail(self.logs, name, TAIL_LINES)}")
        run_id = int(match.group(1))
        status, deadline = None, time.monotonic() + 15
        while not (status or "").startswith("finished") and time.monotonic() < deadline:
            status = self.status(run_id)
            time.sleep(0.0 if (status or "").startswith("finished") else 0.5)
        if status != "finished:completed":
            raise LinkLabError(f"run {run_id} ended as {status!r} ({log_path}):\n"
                               f"{log_tail(self.logs, name, TAIL_LINES)}")
        completed.run_id, completed.status = run_id, status  # type: ignore[attr-defined]
        completed.log_path = log_path  # type: ignore[attr-defined]
        return completed

    def cli(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
        """Any ``flwr`` CLI command against the lab's SuperLink (e.g. "list", "linklab")."""
        return subprocess.run(self.names.netns_exec(None) + [str(self.bin_dir / "flwr"), *args],
                              capture_output=True, text=True, timeout=timeout_s,
                              env={**self.env, "FLWR_HOME": str(self.home)}, cwd=self.workdir)

    def status(self, run_id: int) -> str | None:
        """The SuperLink's status of ``run_id`` (e.g. "finished:completed"), None if unknown."""
        proc = self.cli("list", CONNECTION, "--run-id", str(run_id), "--format", "json")
        try:
            runs = json.loads(proc.stdout).get("runs", [])
        except (json.JSONDecodeError, AttributeError):
            return None
        for entry in runs:
            if str(entry.get("run-id")) == str(run_id):
                return entry.get("status")
        return None
