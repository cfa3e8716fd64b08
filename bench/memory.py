"""Benchmark (d): peak memory of a whole offline-default run, all processes together.

Starts ``flwr run . --stream`` with a fresh Flower home, samples every 0.2 s the memory of
the managed SuperLink and all its descendants (SuperExec, ServerApp, Ray's GCS, raylet and
workers) plus the ``flwr`` CLI, and prints the peak of the summed PSS (shared pages split
between the processes that map them) and of the summed RSS (shared pages counted in every
process, an upper bound). Target: <= 4 GB on the 2-core, 24 GB machine.

    .venv/bin/python bench/memory.py [--run-config "strategy='fedavg'"]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.deploy.processes import descendants

ROOT = Path(__file__).resolve().parents[1]


def tree(roots: list[int]) -> set[int]:
    """``roots`` and their live descendants (``tools.deploy.processes``)."""
    return set(roots) | {child["pid"] for root in roots for child in descendants(root)}


def memory_kb(pid: int) -> tuple[int, int]:
    """(PSS, RSS) in kB, or zeros for a process that is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    values = {line.split(":")[0]: int(line.split()[1]) for line in text.splitlines()[1:]}
    return values.get("Pss", 0), values.get("Rss", 0)


def superlinks(home: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"flower-superlink.*{home}"], text=True,
                         capture_output=True).stdout
    return [int(p) for p in out.split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-config", default="")
    args = parser.parse_args()
    running = superlinks("")
    if running:  # `flwr run` would hand the run to it, and its memory would not be counted
        sys.exit(f"a SuperLink is already running (pids {running}); stop it first "
                 "(pkill -f flower-superlink) so that this run starts and measures its own")
    venv_bin = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        home = os.path.join(tmp, "flwr-home")
        os.makedirs(home)
        env = {**os.environ, "FLWR_HOME": home, "PATH": f"{venv_bin}:{os.environ['PATH']}",
               "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
        run_config = f"outputs-dir='{tmp}/out' {args.run_config}".strip()
        cli = subprocess.Popen([str(venv_bin / "flwr"), "run", ".", "--stream",
                                "--run-config", run_config], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peak_pss = peak_rss = 0
        seen_superlink = False
        t0 = time.perf_counter()
        try:
            while cli.poll() is None:
                ours = superlinks(home)
                seen_superlink |= bool(ours)
                pids = tree([cli.pid, *ours])
                pss, rss = map(sum, zip(*(memory_kb(p) for p in pids), strict=True))
                peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
                time.sleep(0.2)
        finally:
            for pid in superlinks(home):
                for target in tree([pid]):
                    try:
                        os.kill(target, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
    print(f"flwr run . finished with code {cli.returncode} in {time.perf_counter() - t0:.0f} s")
    if not seen_superlink:
        sys.exit("no SuperLink of this run was seen: the figures would miss the run's processes")
    print(f"peak memory of all processes: {peak_pss / 1e6:.2f} GB PSS, "
          f"{peak_rss / 1e6:.2f} GB RSS (target <= 4 GB)")


if __name__ == "__main__":
    main()
