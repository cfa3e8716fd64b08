"""`flwr stop` on a run under `flwr run`: Flower's exit handlers run in
the simulation process's main thread while the ServerApp trains in another; after the stop
nothing more is written, the folder's summary, tables and checkpoint describe the same
rounds, the process ends, and the run resumes from its folder."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from fedvit.config.appconfig import APP_ROOT
from managed import flwr_env, stop_superlink

SMALL = "model-name='test_vit' img-size=16 patch-size=4 weights-path='' local-epochs=1"


def _simulation_processes(home: Path) -> list[int]:
    """Flower's simulation processes under this test's managed SuperLink."""
    out = subprocess.run(["pgrep", "-f", "flwr-simulation"], text=True,
                         capture_output=True).stdout
    pids = []
    for pid in map(int, out.split()):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if f"FLWR_HOME={home}".encode() in env:
            pids.append(pid)
    return pids


def _rounds(run_dir: Path) -> dict:
    read = lambda name: json.loads((run_dir / name).read_text())  # noqa: E731
    return {"summary": read("summary.json")["completed-rounds"],
            "rounds": [r["round"] for r in read("rounds.json")],
            "books": sorted({r["round"] for r in read("books.json")}),
            "checkpoint": list(range(1, read("checkpoint.json")["round"] + 1))}


def test_flwr_stop_stops_the_serverapp_and_the_run_resumes(tmp_path):
    home, env = flwr_env(tmp_path)
    flwr = str(Path(sys.executable).parent / "flwr")
    out = tmp_path / "out"
    config = f"{SMALL} num-server-rounds=60 outputs-dir='{out}' run-name='b'"
    run = subprocess.Popen([flwr, "run", str(APP_ROOT), "--stream", "--run-config", config],
                           cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
    try:
        log, run_id = "", None
        for line in run.stdout:  # until the ServerApp logged round 2
            log += line
            if run_id is None and (m := re.search(r"Successfully started run (\d+)", line)):
                run_id = m.group(1)
            if re.search(r"fedvit: round 2/60", line):
                break
        assert run_id is not None, log[-3000:]
        stop = subprocess.run([flwr, "stop", run_id], cwd=tmp_path, env=env, text=True,
                              capture_output=True, timeout=120)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        for _ in range(300):  # Flower tells the process at its next heartbeat (about 24 s)
            if (out / "b" / "summary.json").exists() and not _simulation_processes(home):
                break
            time.sleep(0.5)
        assert not _simulation_processes(home), "the simulation process did not end"
        run.kill()
        state = _rounds(out / "b")
        summary = json.loads((out / "b" / "summary.json").read_text())
        assert summary["status"] == "interrupted", summary
        done = state["summary"]
        assert 2 <= len(done) < 60 and state == {k: done for k in state}, state
        # It resumes: one more round in the same folder.
        resumed = subprocess.run(
            [flwr, "run", str(APP_ROOT), "--stream", "--run-config",
             f"{SMALL} num-server-rounds={len(done) + 1} resume-from='{out / 'b'}'"],
            cwd=tmp_path, env=env, text=True, capture_output=True, timeout=400)
        assert json.loads((out / "b" / "summary.json").read_text())["status"] == "complete", (
            resumed.stdout[-3000:])
        assert _rounds(out / "b")["rounds"] == list(range(1, len(done) + 2))
    finally:
        run.kill()
        stop_superlink(home)
