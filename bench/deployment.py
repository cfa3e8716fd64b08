"""Where a deployment's round goes, against the same run in simulation.

Runs one config twice with 2 nodes: in simulation (``run_simulation``, one CPU per client)
and as a real deployment on this host (``tools/deploy/deploy.sh``: a SuperLink and 2 SuperNodes,
each ClientApp on ``num-threads`` = cores ÷ 2). Prints the steady rounds' phase tables side
by side, then:

* each run's largest unexplained share of a steady round (target <= 10 %);
* the deployment's fixed costs per message, medians over the steady replies: pickup,
  start-up (with the task build) and return, the figures behind ``deploy-*-s``;
* critical-path compute, deployment ÷ simulation (target <= 1.3: one thread budget);
* the simulation's deployment projection (its replies plus the run config's ``deploy-*-s``)
  against the deployment's measured round; both runs on 10 Gbit/s links without latency,
  as the deployment's loopback is.

    .venv/bin/python bench/deployment.py [--config default|vit-b] [--rounds 3]

``vit-b`` is ViT-B/16 with random weights at 32 px, fedavg, one local epoch (685 MB a
round). The last line is
``deployment: <config> unexplained sim=<p>% deploy=<p>% compute deploy/sim=<r> round deploy=<s>s
projected-from-sim=<s>s``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from server_app.timeline import NodeTimes, RoundTimes, format_table, mean_table
from tools.deploy.linklab import format_run_config
from tools.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]
# Both runs on links as fast as the deployment's loopback really is, so that the
# simulation's deployment projection and the deployment's measured round compare.
FAST_LINKS = {"link-down-mbps": 10_000.0, "link-up-mbps": 10_000.0, "link-latency-ms": 0.0}
CONFIGS = {
    "default": {},
    "vit-b": {"model-name": "vit_base_patch16_224", "img-size": 32, "patch-size": 16,
              "weights-path": "", "strategy": "fedavg", "local-epochs": 1},
}


def deployed(overrides: dict, out: Path) -> tuple[list[RoundTimes], list[NodeTimes]]:
    """Run ``overrides`` on a 2-node deployment of this host; its rounds and replies."""
    lab = out / "deployment"
    env = {**os.environ, "LINKS": "10000:10000:0"}  # as FAST_LINKS
    deploy = [str(ROOT / "tools" / "deploy" / "deploy.sh")]
    subprocess.run([*deploy, "start", "--nodes", "2", "--dir", str(lab)], env=env,
                   check=True, stdout=subprocess.DEVNULL)
    try:
        subprocess.run([str(ROOT / ".venv" / "bin" / "flwr"), "run", str(ROOT),
                        "local-deployment", "--stream", "--run-config",
                        format_run_config({**overrides, "outputs-dir": str(out),
                                           "run-name": "deployed"})],
                       env={**env, "FLWR_HOME": str(lab / "flwr-home")}, check=True,
                       cwd=ROOT, stdout=subprocess.DEVNULL, timeout=3600)
    finally:
        subprocess.run([*deploy, "stop", "--dir", str(lab)], check=False,
                       stdout=subprocess.DEVNULL)
    run = out / "deployed"
    phases = json.loads((run / "phases.json").read_text())
    nodes = json.loads((run / "nodes.json").read_text())
    return ([RoundTimes.from_row(r) for r in phases], [NodeTimes.from_row(r) for r in nodes])


def fixed_costs(nodes: list[NodeTimes], rounds: set[int]) -> dict[str, float]:
    """Medians over the replies of ``rounds``: pickup, start-up + task build, return."""
    sec = [n.seconds() for n in nodes if n.round in rounds]
    return {"pickup-s": statistics.median(s["pickup"] for s in sec),
            "startup-s": statistics.median(s["start-up"] + s["task-build"] for s in sec),
            "return-s": statistics.median(s["return"] for s in sec)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="default")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    overrides = {**CONFIGS[args.config], **FAST_LINKS, "num-server-rounds": args.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        outcome = simulate({**overrides, "outputs-dir": tmp}, num_nodes=2)
        sim, sim_nodes = outcome.phases[1:], outcome.nodes
        dep, nodes = deployed(overrides, Path(tmp))
        dep = dep[1:]
    print(f"{args.config}: steady rounds 2..{args.rounds}, 2 nodes")
    print(format_table({"sim": mean_table(sim), "deploy": mean_table(dep)},
                       kinds=("measured",)))
    unexplained = {k: 100 * max(r.unexplained_share for r in v)
                   for k, v in (("sim", sim), ("deploy", dep))}
    fixed = fixed_costs(nodes, {r.round for r in dep})
    compute = (statistics.mean(r.critical_compute_s for r in dep)
               / statistics.mean(r.critical_compute_s for r in sim))
    measured = statistics.mean(r.wall_s for r in dep)
    projected = statistics.mean(r.deployment_s for r in sim)
    print("deployment fixed costs per message (medians): "
          + ", ".join(f"{k} {v:.2f}" for k, v in fixed.items()))
    print(f"critical-path compute deployment / simulation: {compute:.2f} (target <= 1.3)")
    per_reply = [statistics.median(sum(n.compute.values()) for n in ns
                                   if n.round in {r.round for r in rs})
                 for ns, rs in ((nodes, dep), (sim_nodes, sim))]
    print(f"one reply's compute, median: deployment {per_reply[0]:.3f} s, simulation "
          f"{per_reply[1]:.3f} s, ratio {per_reply[0] / per_reply[1]:.2f} (the critical path "
          "is their union: nodes that start computing at different times add up)")
    print(f"deployment: {args.config} unexplained sim={unexplained['sim']:.1f}% "
          f"deploy={unexplained['deploy']:.1f}% compute deploy/sim={compute:.2f} "
          f"round deploy={measured:.2f}s projected-from-sim={projected:.2f}s")


if __name__ == "__main__":
    main()
