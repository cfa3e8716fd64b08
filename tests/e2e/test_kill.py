"""A SuperNode killed mid-run, while its ClientApp works on round 1: the run finishes with
the remaining nodes, and the books count the failure in its round. Real processes
(tools/deploy/deploy.sh), insecure loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter

import pytest
from test_deployment import (
    CONNECTION,
    FLWR,
    SUPERLINK,
    SUPERNODE,
    Deployment,
    _descendants,
    _free_port,
    _gone,
    _port_free,
    _recorded,
)

from fedvit.config.appconfig import APP_ROOT

pytestmark = pytest.mark.skipif(not (SUPERLINK.exists() and SUPERNODE.exists()),
                                reason="flower-superlink/flower-supernode not installed")


def _pid_of(pids_file, name: str) -> int:
    for line in pids_file.read_text().splitlines():
        pid, _, recorded = line.split()[:3]
        if recorded == name:
            return int(pid)
    raise AssertionError(f"{name} not in {pids_file}")


def test_killed_supernode_run_finishes_with_the_others(tmp_path):
    port = 8000 if _port_free(8000) else _free_port()
    dep = Deployment(tmp_path, port)
    dep.env["SUPERNODE_PORT_BASE"] = str(next(
        b for b in range(9200, 9900, 3) if all(_port_free(b + i) for i in range(3))))
    out = tmp_path / "out"
    procs: dict[int, str] = {}
    run = None
    try:
        started = dep.deploy("start", "--nodes", "3", "--port", str(port))
        procs = _recorded(dep.dir / "pids")
        assert started.returncode == 0, started.stdout + started.stderr
        victim = _pid_of(dep.dir / "pids", "supernode-2")
        idle = _descendants({victim})
        run_config = (f"num-server-rounds=2 weights-path='' local-epochs=1 min-nodes=2 "
                      f"outputs-dir='{out}' run-name='kill'")
        run = subprocess.Popen([str(FLWR), "run", ".", CONNECTION, "--stream",
                                "--run-config", run_config], env=dep.env, cwd=APP_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 400
        while not _descendants({victim}) - idle:  # its ClientApp is working on round 1
            assert run.poll() is None and time.monotonic() < deadline, "round 1 never began"
            time.sleep(0.2)
        assert not (out / "kill" / "rounds.json").is_file()  # round 1 has not ended
        for pid in {victim} | _descendants({victim}):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log, _ = run.communicate(timeout=900)
        assert run.returncode == 0, log[-3000:]
    finally:
        if run and run.poll() is None:
            run.kill()
        procs |= _recorded(dep.dir / "pids")
        dep.deploy("stop", timeout=90)
        for pid in _gone(procs):
            os.kill(pid, signal.SIGKILL)
    summary = json.loads((out / "kill" / "summary.json").read_text())
    books = json.loads((out / "kill" / "books.json").read_text())
    assert summary["status"] == "complete" and summary["rounds"] == 2
    failed = [r for r in books if r["status"] == "error"]
    assert failed, "the killed node's failure is not in the books"
    assert {r["round"] for r in failed} == {1} and len({r["node-id"] for r in failed}) == 1
    dead = failed[0]["node-id"]
    assert any(r["node-id"] == dead and r["direction"] == "down" and r["status"] == "ok"
               for r in books if r["round"] == 1)  # it was sent its round-1 work
    later = [r for r in books if r["round"] == 2 and r["phase"] == "train"]
    assert all(r["node-id"] != dead for r in later)  # not sampled again
    assert Counter(r["direction"] for r in later) == {"down": 2, "up": 2}
