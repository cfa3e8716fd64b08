"""``fedvit-experiments``: the analysis' experiments as one command, then one report.

For each strategy, from the run config (defaults: the offline default) vary one factor at
a time with identical seeds: image size (two sizes), local epochs (1, 5, 10), precision
(fp32, and bf16 where the device supports it); for fedlora also the uplink codecs fp16,
int8 and top-k 0.1, and FFA-LoRA aggregation. Each run is a whole federation under
``run_simulation`` in its own process, written to ``<out>/runs/<name>/``; a run whose
``summary.json`` exists is complete and is skipped on a rerun, so the command can be
interrupted and rerun. Progress: runs done, the current run and its round.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from fedvit.config.appconfig import AppConfig
from fedvit.config.rules import STRATEGIES
from fedvit.keys import SUMMARY_FILE

ROUND_LINE = re.compile(r"fedvit: round (\d+)/(\d+) \| central acc ([\d.]+)")


def bf16_supported() -> bool:
    """bf16 autocast is worth running: a GPU, or a CPU with native bf16 support."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def grid(base: AppConfig, quick: bool) -> list[tuple[str, dict]]:
    """(run name, run-config overrides) for every experiment, in order."""
    sizes = (base.img_size, 2 * base.img_size)
    epochs = (1, 2) if quick else (1, 5, 10)
    precisions = ("fp32", "bf16") if bf16_supported() and not quick else ("fp32",)
    codecs = ("int8",) if quick else ("fp16", "int8", "topk:0.1")
    runs: list[tuple[str, dict]] = []
    for strategy in STRATEGIES:
        variants: list[dict] = [{}]
        variants += [{"img-size": s} for s in sizes if s != base.img_size]
        variants += [{"local-epochs": e} for e in epochs if e != base.local_epochs]
        variants += [{"precision": p} for p in precisions if p != "fp32"]
        if strategy == "fedlora":  # beyond LoRA: compressed uplinks, exact aggregation
            variants += [{"codec-up": c} for c in codecs] + [{"lora-aggregation": "ffa"}]
        for v in variants:
            name = "-".join([strategy, *(f"{k}={val}" for k, val in v.items())]) or strategy
            runs.append((name, {"strategy": strategy, **v}))
    return runs


def run_one(name: str, overrides: dict, out: Path, nodes: int) -> bool:
    """Run one experiment in a child process, echoing its round progress."""
    cfg = {**overrides, "outputs-dir": str(out / "runs"), "run-name": name}
    cmd = [sys.executable, "-m", "tools.experiments", "--one", json.dumps(cfg),
           "--nodes", str(nodes)]
    log = (out / "logs" / f"{name}.log").open("w")
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        for line in proc.stdout:
            log.write(line)
            if m := ROUND_LINE.search(line):
                print(f"    round {m[1]}/{m[2]}: central accuracy {m[3]}", flush=True)
    log.close()
    return proc.returncode == 0


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``fedvit-experiments``: run the grid (skipping complete runs), then
    report on all of it.

    Args:
        argv: command-line arguments (None: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(prog="fedvit-experiments",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="~/fedvit-outputs/experiments",
                        help="folder of the runs and the report (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a small grid, 2 rounds")
    parser.add_argument("--nodes", type=int, default=2,
                        help="simulated SuperNodes per run (default: %(default)s)")
    parser.add_argument("--run-config", default="", help="base overrides 'key=value ...'")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from flwr.common.config import parse_config_args

    if args.one:  # child process: one federation
        from tools.simulate import simulate

        simulate(json.loads(args.one), num_nodes=args.nodes)
        return
    base_overrides = parse_config_args([args.run_config]) if args.run_config else {}
    if args.quick:
        base_overrides.setdefault("num-server-rounds", 2)
    base = AppConfig.from_run_config(base_overrides)
    out = Path(args.out).expanduser().resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    runs = grid(base, args.quick)
    t0 = time.perf_counter()
    for i, (name, overrides) in enumerate(runs, 1):
        done = out / "runs" / name / SUMMARY_FILE
        if done.is_file():
            print(f"[{i}/{len(runs)}] {name}: complete, skipped", flush=True)
            continue
        print(f"[{i}/{len(runs)}] {name}: running", flush=True)
        if not run_one(name, {**base_overrides, **overrides}, out, args.nodes):
            sys.exit(f"run {name} failed: see {out / 'logs' / (name + '.log')}")
    print(f"all {len(runs)} runs complete in {time.perf_counter() - t0:.0f} s", flush=True)
    from tools.report.cli import main as report

    report([str(out / "runs" / name) for name, _ in runs] + ["--out", str(out / "report")])
    print(f"outputs: {out / 'runs'}; report: {out / 'report' / 'report.md'}")


if __name__ == "__main__":
    main()
