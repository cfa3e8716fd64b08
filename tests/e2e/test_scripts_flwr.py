"""The user's own command tells what happened: `scripts/flwr
run --stream` ends with the run's outcome from its summary, non-zero unless complete, and
Ctrl-C on it stops the run (not only the log) and says how to resume."""

from __future__ import annotations

import json
import re
import signal
import subprocess

from fedvit.config.appconfig import APP_ROOT
from managed import flwr_env, stop_superlink

FLWR = str(APP_ROOT / "scripts" / "flwr")
SMALL = "model-name='test_vit' img-size=16 patch-size=4 weights-path='' local-epochs=1"


def test_a_run_that_did_nothing_ends_non_zero_with_its_reason(tmp_path):
    home, env = flwr_env(tmp_path)
    out = tmp_path / "out"
    config = f"{SMALL} num-server-rounds=2 val-fraction=0.999 outputs-dir='{out}' run-name='a'"
    try:
        proc = subprocess.run([FLWR, "run", str(APP_ROOT), "--stream", "--run-config", config],
                              cwd=tmp_path, env=env, text=True, capture_output=True,
                              timeout=500)
    finally:
        stop_superlink(home)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert re.match(r"scripts/flwr: run \d+ nothing-aggregated after rounds \[\]: every node "
                    r"of round 1 \(2 of 2\) failed the same way: run config refused by the "
                    r"ClientApp: 'val-fraction' = 0.999 is not allowed: ", last), last
    assert json.loads((out / "a" / "summary.json").read_text())["status"] == (
        "nothing-aggregated")


def test_ctrl_c_on_scripts_flwr_stops_the_run_and_says_how_to_resume(tmp_path):
    home, env = flwr_env(tmp_path)
    out = tmp_path / "out"
    config = f"{SMALL} num-server-rounds=60 outputs-dir='{out}' run-name='c'"
    # As in a terminal: Ctrl-C's SIGINT is not ignored (a non-interactive shell starts its
    # background jobs, e.g. a CI run, with SIGINT ignored, and Python then never raises
    # KeyboardInterrupt).
    proc = subprocess.Popen([FLWR, "run", str(APP_ROOT), "--stream", "--run-config", config],
                            cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in proc.stdout:
            if "fedvit: round 2/60" in line:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
        stop_superlink(home)
    assert proc.returncode == 1, err[-3000:]
    assert "scripts/flwr: Ctrl-C: stopping run" in err
    summary = json.loads((out / "c" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and len(summary["completed-rounds"]) < 60
    assert re.search(r"scripts/flwr: run \d+ interrupted after rounds \[1, 2.*resume with "
                     rf"--run-config \"resume-from='{out / 'c'}'", err), err[-2000:]
