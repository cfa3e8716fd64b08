"""Benchmark (b): steady-state framework overhead, round wall time / critical-path compute.

Runs the default config (or overrides) as a whole federation under run_simulation, then
prints, for rounds 2..N, the mean round wall time, the mean client compute on the critical
path (the union of the clients' compute intervals: clients sharing CPUs run in waves), and
their ratio (target <= 1.10), and the phase table of those rounds (what the rest is: central
evaluation, aggregation, framework); the first round, which starts the Ray workers, separately.

    .venv/bin/python bench/overhead.py [--nodes 4] [--run-config "num-server-rounds=6"]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from flwr.common.config import parse_config_args

from server_app.timeline import format_table, mean_table
from tools.simulate import simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--run-config", default="num-server-rounds=6")
    args = parser.parse_args()
    overrides = parse_config_args([args.run_config]) if args.run_config else {}
    with tempfile.TemporaryDirectory() as out:
        outcome = simulate({**overrides, "outputs-dir": out}, num_nodes=args.nodes,
                           cpus=args.cpus)
    first, steady = outcome.phases[0], outcome.phases[1:]
    wall = statistics.mean(p.wall_s for p in steady)
    compute = statistics.mean(p.critical_compute_s for p in steady)
    server = statistics.mean(p.measured["aggregation"] + p.measured["central-eval"]
                             + p.measured["configure"] for p in steady)
    print(f"{outcome.summary['strategy']} on {outcome.summary['model-name']}, {args.nodes} "
          f"clients on {args.cpus} CPUs, {len(outcome.phases)} rounds")
    print(f"first round (starts the workers): {first.wall_s:.2f} s wall, "
          f"{first.critical_compute_s:.2f} s critical-path compute")
    print(f"rounds 2..{len(outcome.phases)}: {wall:.3f} s wall, {compute:.3f} s critical-path "
          f"compute, {server:.3f} s server work (configure, aggregation, central eval)")
    print(f"where a steady round goes:\n{format_table({'rounds 2..': mean_table(steady)})}")
    print(f"ratio round wall / critical-path compute: {wall / compute:.3f} (target <= 1.10)")
    print(f"ratio round wall / (critical-path compute + server work): "
          f"{wall / (compute + server):.3f}")


if __name__ == "__main__":
    main()
