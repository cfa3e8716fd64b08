"""Benchmark: what a fresh ClientApp process costs, from process start to the first step.

In a Flower 1.41 deployment every message runs in a new ``flwr-clientapp`` process. Each
sample here is such a fresh Python process doing what that one does up to the first
training step (minus the messaging with its SuperNode):

1. import Flower's ClientApp runtime, the modules the ``flwr-clientapp`` script imports
   (``flwr.supernode.cli``, which holds ``flwr_clientapp`` and, with it,
   ``flwr.supernode.runtime.run_clientapp``);
2. load ``client_app.app:app`` the way Flower does (``flwr.supercore.object_ref.load_app``
   with the project folder);
3. build the local task as the train handler's ``_prepare`` does: validated config, the
   task of partition 0 of 2 (default run config), the backbone check, the received global
   tensors loaded;
4. train mode and the optimizer, as ``_prepare`` does for training (a cached model loads its
   training program there), then one step of the project's ``fedvit.model.train.train_step``.

It prints the seconds from the process's start (``fedvit.startup.process_start_time``, the
OS's record) to the end of that step, split into interpreter + imports, task build and
first step (train mode and the optimizer's construction included), and finer: interpreter +
Flower's runtime, the app's imports, the task, the optimizer, the first batch and step. "Before" is
another checkout (``--before /work/main``) or a git revision (default: the main branch's
commit this branch started from), checked out into a temporary ``git worktree`` that is
removed afterwards; "after" is this working tree. Before and after processes alternate, so
that drifting machine load hits both alike (the 1-minute load average is printed before
and after the samples); both must reach the same backbone fingerprint, the
same exchanged tensors and the same first-step loss (checked). Children run with
``OMP_NUM_THREADS=1`` (one SuperNode's thread budget when two share a 2-core host) and the
caller's ``$FEDVIT_CACHE``; one untimed warm-up process per side fills the caches first.

    .venv/bin/python bench/coldstart.py [--pairs 7] [--before REV_OR_FOLDER]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("imports", "task", "step", "total")
# The same, finer: interpreter + Flower's runtime, the app's imports, the task, the
# optimizer's construction (torch imports torch._dynamo there), the first batch and step.
FINE = ("flower", "app", "task", "optimizer", "batch+step")
TARGET_S = 3.0


def child() -> None:
    """One sample: run in a fresh process whose working directory is the tree measured."""
    from fedvit.startup import process_start_time

    start = process_start_time()
    import time

    import flwr.supernode.cli  # noqa: F401  (what the flwr-clientapp script imports)
    import flwr.supernode.runtime.run_clientapp  # noqa: F401
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.supercore.object_ref import load_app

    t_flower = time.time()
    load_app("client_app.app:app", LoadClientAppError, Path.cwd())
    t_imports = time.time()

    import torch
    from flwr.app import ArrayRecord, ConfigRecord

    try:  # fedvit's subpackages; a "before" from the flat layout has the same names
        from fedvit.codecs.payload import record_arrays
        from fedvit.config.appconfig import AppConfig
        from fedvit.model.train import PhaseClock, _batches, make_optimizer, train_step
    except ModuleNotFoundError:
        from fedvit.codecs import record_arrays
        from fedvit.config import AppConfig
        from fedvit.train import PhaseClock, _batches, make_optimizer, train_step

    # The functions the app itself uses, from its own modules (before and after alike).
    app, task_module = sys.modules["client_app.app"], sys.modules["client_app.task"]
    exchanged_state, load_exchanged = app.exchanged_state, app.load_exchanged
    check_backbone, local_task = task_module.check_backbone, task_module.local_task
    backbone_fingerprint = task_module.backbone_fingerprint

    cfg = AppConfig.from_run_config({})
    pid, num, server_round = 0, 2, 1
    task = local_task(cfg, pid, num)
    # What the server sends in round 1: its own identically seeded model's tensors and,
    # for fedlora, the backbone's fingerprint (computed here as the check computes it).
    received_state = {k: v.clone() for k, v in exchanged_state(task.model).items()}
    fingerprint = backbone_fingerprint(task.model)
    t_check = time.time()
    check_backbone(task, ConfigRecord({"backbone": fingerprint}))
    check_s = time.time() - t_check
    received = record_arrays(ArrayRecord(received_state))
    load_exchanged(task.model, {k: torch.from_numpy(v) for k, v in received.items()})
    t_task = time.time()

    torch.manual_seed(cfg.seed + 1000 * server_round + pid)
    task.train.generator.manual_seed(cfg.seed + server_round)
    model = task.model.to(cfg.torch_device).train()
    optimizer = make_optimizer(model, cfg.learning_rate)
    t_optimizer = time.time()
    clock = PhaseClock(cuda=cfg.torch_device == "cuda")
    clock.start()
    images, labels = next(_batches(task.train, cfg.torch_device))
    clock.lap("data")
    loss = train_step(model, optimizer, images, labels, clock, cfg.use_bf16)
    t_step = time.time()

    after = {k: v.clone() for k, v in exchanged_state(model).items()}
    digest = __import__("hashlib").sha256()
    for k in sorted(after):
        digest.update(k.encode())
        digest.update(after[k].contiguous().numpy().tobytes())
    print(json.dumps({
        # The backbone check runs twice here (once to get the server's value): count once.
        "imports": t_imports - start, "task": t_task - t_imports - check_s,
        "step": t_step - t_task, "total": t_step - start - check_s,
        "flower": t_flower - start, "app": t_imports - t_flower,
        "optimizer": t_optimizer - t_task, "batch+step": t_step - t_optimizer,
        "fingerprint": fingerprint, "loss": float(loss), "state": digest.hexdigest(),
        "keys": len(after), "heavy": sorted(m for m in (
            "datasets", "flwr_datasets", "sklearn", "torchvision", "torchvision.models",
            "torch._dynamo", "transformers", "peft", "timm") if m in sys.modules),
    }))


def sample(tree: Path) -> dict:
    """One fresh process measuring ``tree``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child"],
                         cwd=tree, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"sample in {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def default_before() -> str:
    """The main branch's commit this branch started from."""
    return subprocess.run(["git", "merge-base", "HEAD", "main"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()


def main() -> None:
    if "--child" in sys.argv:
        child()
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--before", default=None,
                        help="a checkout's folder or a git revision measured as 'before' "
                             "(default: merge-base with main)")
    args = parser.parse_args()
    before = args.before or default_before()
    tmp = None if Path(before).is_dir() else Path(tempfile.mkdtemp(prefix="coldstart-before-"))
    tree = Path(before).resolve() if tmp is None else tmp / "tree"
    if tmp is not None:
        subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(tree), before],
                       cwd=ROOT, check=True)
    load = [os.getloadavg()[0]]
    try:
        runs: dict[str, list[dict]] = {"before": [], "after": []}
        trees = {"before": tree, "after": ROOT}
        for side in trees:  # warm-up: fill the caches, not timed
            sample(trees[side])
        for i in range(args.pairs):
            for side in (("before", "after") if i % 2 == 0 else ("after", "before")):
                runs[side].append(sample(trees[side]))
                r = runs[side][-1]
                print(f"pair {i + 1}/{args.pairs} {side:6s} " + " ".join(
                    f"{k} {r[k]:.2f}s" for k in SPLITS), flush=True)
    finally:
        if tmp is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT,
                           check=True)
            tmp.rmdir()
    load.append(os.getloadavg()[0])
    same = {k: {r[k] for side in runs.values() for r in side}
            for k in ("fingerprint", "loss", "state", "keys")}
    print(f"before = {before if tmp is None else before[:12]}, after = working tree, "
          f"{args.pairs} pairs, OMP_NUM_THREADS=1, 1-minute load {load[0]:.2f} -> "
          f"{load[1]:.2f}, medians (s):")
    print(f"{'':8s}" + "".join(f"{k:>10s}" for k in SPLITS))
    med = {side: {k: statistics.median(r[k] for r in runs[side]) for k in SPLITS}
           for side in runs}
    for side in runs:
        print(f"{side:8s}" + "".join(f"{med[side][k]:10.2f}" for k in SPLITS))
    print(f"{'ratio':8s}" + "".join(
        f"{med['after'][k] / med['before'][k]:10.2f}" if med["before"][k] else f"{'-':>10s}"
        for k in SPLITS))
    print("finer split, medians (s):")
    print(f"{'':8s}" + "".join(f"{k:>11s}" for k in FINE))
    for side in runs:
        print(f"{side:8s}" + "".join(
            f"{statistics.median(r[k] for r in runs[side]):11.2f}" for k in FINE))
    for side in runs:
        print(f"{side} imports: {', '.join(runs[side][-1]['heavy']) or 'none of the listed'}")
    if any(len(v) != 1 for v in same.values()):
        raise SystemExit(f"before and after differ: {same}")
    print(f"identical: backbone {same['fingerprint'].pop()}, first-step loss "
          f"{same['loss'].pop():.6f}, {same['keys'].pop()} exchanged tensors after the step")
    print(f"coldstart: before={med['before']['total']:.2f}s after={med['after']['total']:.2f}s "
          f"difference={med['after']['total'] - med['before']['total']:+.2f}s "
          f"target<={TARGET_S:g}s")


if __name__ == "__main__":
    main()
