"""Benchmark (c), on a GPU: the clients' local training step against the device's own ceiling.

1. The ceiling: TFLOP/s of a bf16 ``n x n x n`` matrix product on this device (n = 8192).
2. For LoRA (``fedlora``) and full fine-tuning (``fedavg``) at each batch size, on the model
   the clients run (``fedvit.model.cache.cached_model``; random weights, synthetic batches
   resident on the device), three ways of the clients' own loop ``fedvit.model.train.train_epochs``:
   - ``app``: as a client trains, ``train_step`` timed by its ``PhaseClock``;
   - ``bare``: the same loop with a clock that records nothing (what the timing costs);
   - ``compiled``: ``app`` on the model compiled as ``compile`` = true compiles it
     (``fedvit.model.train.compile_model``: one dynamic-batch graph per strategy; the first
     batch's warm-up steps include compiling it).
   ``app`` and ``bare`` alternate, ``--repeats`` times each; the median run counts.
FLOPs of a step are counted, not estimated: ``torch.utils.flop_counter.FlopCounterMode`` over
one ``train_step`` (forward and backward) of the eager model at that batch.

Prints per row images/s, TFLOP/s, its share of the measured ceiling, peak device memory and,
for ``app``, the phases' sum against the loop's wall time; then the last line
``gpu: lora share-of-ceiling=<p>% timing-cost=<p>% lora/full images-per-s=<r>``: LoRA's
compiled ``app`` step at the target batch (128) as a share of the ceiling (targets >= 40 %),
the timing's cost, ``app`` against ``bare`` time per step for LoRA at that batch (<= 3 %),
and LoRA / full ``app`` images/s there. Strategies run one after the other, LoRA first, each
eager then compiled; ``--budget-s`` skips compiled rows that would start too late.

    python3 bench/gpu_vit_b.py                        # ViT-B/16, 224 px, batches 64,128,256
    .venv/bin/python bench/gpu_vit_b.py --device cpu --model test_vit --img-size 16 \\
        --patch-size 4 --batches 4,8 --matmul 512 --steps 3   # the script itself, on a CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time
from pathlib import Path

import torch

from fedvit.config.appconfig import AppConfig
from fedvit.model.cache import cached_model
from fedvit.model.train import (
    PhaseClock,
    TrainStats,
    compile_model,
    make_optimizer,
    train_epochs,
    train_step,
)

STRATEGIES = {"lora": "fedlora", "full": "fedavg"}
TARGET_BATCH = 128


class NoClock(PhaseClock):
    """A clock that records nothing: the loop without its timing."""

    def __init__(self) -> None:
        super().__init__(cuda=False)

    def start(self) -> None:
        pass

    def lap(self, phase: str) -> None:
        pass

    def settle(self) -> None:
        pass


def sync(device: str) -> None:
    """Wait for the device's queued work (nothing to wait for on the CPU)."""
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_ceiling(device: str, n: int, seconds: float = 1.0) -> float:
    """TFLOP/s of a bf16 ``(n, n) @ (n, n)`` product, the best of 3 runs of about
    ``seconds`` each (2 n^3 FLOPs a product)."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    a @ b
    sync(device)
    iters = max(1, int(seconds / max(time.perf_counter() - t0, 1e-6)))
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(iters):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12)
    return best


def step_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> float:
    """FLOPs of one ``train_step`` (forward, backward; the optimizer's elementwise update
    is not counted), counted by ``FlopCounterMode`` as the step runs (it also warms up)."""
    from torch.utils.flop_counter import FlopCounterMode

    optimizer = make_optimizer(model, 1e-4)
    with FlopCounterMode(display=False) as counter:
        train_step(model, optimizer, x, y, PhaseClock(cuda=False), bf16)
    return float(counter.get_total_flops())


def run_loop(model, optimizer, x, y, steps: int, cfg: AppConfig,
             clock: PhaseClock | None) -> tuple[TrainStats, int]:
    """(stats, peak device bytes) of ``steps`` steps of the clients' loop on one batch."""
    if cfg.torch_device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    stats = train_epochs(model, [(x, y)] * steps, 1, cfg.learning_rate, cfg.torch_device,
                         cfg.use_bf16, optimizer=optimizer, clock=clock)
    peak = torch.cuda.max_memory_allocated() if cfg.torch_device == "cuda" else 0
    return stats, peak


def measure(mode: str, cfg: AppConfig, batches: list[int], ceiling: float,
            args: argparse.Namespace) -> list[dict]:
    """Rows of one strategy (printed as measured): for each batch, app and bare; then
    compiled for each batch."""
    device = cfg.torch_device
    model = cached_model(cfg, args.num_classes).to(device).train()
    optimizer = make_optimizer(model, cfg.learning_rate)
    data, rows = {}, []
    for batch in batches:
        gen = torch.Generator().manual_seed(batch)
        x = torch.randn(batch, 3, cfg.img_size, cfg.img_size, generator=gen).to(device)
        y = torch.randint(0, args.num_classes, (batch,), generator=gen).to(device)
        data[batch] = (x, y, step_flops(model, x, y, cfg.use_bf16))
        runs: dict[str, list] = {"app": [], "bare": []}
        run_loop(model, optimizer, x, y, args.warmup, cfg, None)
        for _ in range(args.repeats):
            runs["app"].append(run_loop(model, optimizer, x, y, args.steps, cfg, None))
            runs["bare"].append(run_loop(model, optimizer, x, y, args.steps, cfg, NoClock()))
        for way, results in runs.items():
            stats, peak = sorted(results, key=lambda r: r[0].wall_s)[(len(results) - 1) // 2]
            rows.append(show(ceiling, row(mode, way, batch, stats, peak, data[batch][2])))
    if args.no_compile:
        return rows
    if args.budget_s and time.perf_counter() - args.t0 > args.budget_s:
        print(f"{mode}: compiled rows skipped: past the --budget-s of {args.budget_s:g} s")
        return rows
    try:
        compile_model(model)
        for batch in batches:
            x, y, flops = data[batch]
            t0 = time.perf_counter()
            run_loop(model, optimizer, x, y, args.warmup, cfg, None)  # compiles
            compile_s = time.perf_counter() - t0
            stats, peak = run_loop(model, optimizer, x, y, args.steps, cfg, None)
            rows.append(show(ceiling, {**row(mode, "compiled", batch, stats, peak, flops),
                                       "warmup-s": compile_s}))
    except Exception as err:  # e.g. no compiler or triton on this machine: say so, go on
        print(f"{cfg.strategy}: torch.compile failed: {type(err).__name__}: "
              f"{str(err).splitlines()[0] if str(err) else ''}")
    return rows


def row(mode: str, way: str, batch: int, stats: TrainStats, peak: int, flops: float) -> dict:
    """One measured row: throughput, TFLOP/s, memory, and the phases' share of the wall."""
    steps_per_s = stats.examples_per_s / batch
    return {"mode": mode, "way": way, "batch": batch, "images-per-s": stats.examples_per_s,
            "ms-per-step": 1e3 / steps_per_s, "tflops": flops * steps_per_s / 1e12,
            "step-tflop": flops / 1e12, "peak-gib": peak / 2**30,
            "phases-over-wall": sum(stats.phases.values()) / stats.wall_s}


HEADER = (f"{'':5} {'way':9} {'batch':>5} {'images/s':>9} {'ms/step':>8} {'TFLOP/s':>8} "
          f"{'of ceiling':>10} {'peak GiB':>8} {'phases/wall':>11}")


def show(ceiling: float, r: dict) -> dict:
    """Print one row of the table (``HEADER``); return it."""
    phases = f"{r['phases-over-wall']:.3f}" if r["way"] == "app" else ""
    memory = f"{r['peak-gib']:.2f}" if r["peak-gib"] else "n/a"
    print(f"{r['mode']:5} {r['way']:9} {r['batch']:>5} {r['images-per-s']:>9.0f} "
          f"{r['ms-per-step']:>8.2f} {r['tflops']:>8.3g} "
          f"{100 * r['tflops'] / ceiling:>9.1f}% {memory:>8} {phases:>11}", flush=True)
    return r


def report(rows: list[dict], ceiling: float, device: str, target: int) -> str:
    """Print the summary lines below the table; return the last line."""
    if device != "cuda":
        print(f"process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f}"
              " GiB (no device memory on the CPU)")
    at = {(r["mode"], r["way"], r["batch"]): r for r in rows}
    lora_compiled = at.get(("lora", "compiled", target))
    lora_app, lora_bare = at[("lora", "app", target)], at[("lora", "bare", target)]
    for mode in STRATEGIES:
        eager, compiled = at[(mode, "app", target)], at.get((mode, "compiled", target))
        if compiled:
            ratio = compiled["images-per-s"] / eager["images-per-s"]
            first = min((r for r in rows if r["mode"] == mode and r["way"] == "compiled"),
                        key=lambda r: r["batch"])
            print(f"{mode} batch {target}: compiled / eager images/s {ratio:.2f}"
                  + (" (compile is slower here)" if ratio < 1 else "")
                  + f"; compiling (in batch {first['batch']}'s warm-up) took "
                  f"{first['warmup-s']:.1f} s")
    share_row = lora_compiled or lora_app
    if lora_compiled is None:
        print("lora share-of-ceiling below is the eager app step's: no compiled row")
    share = 100 * share_row["tflops"] / ceiling
    cost = 100 * (lora_app["ms-per-step"] / lora_bare["ms-per-step"] - 1)
    ratio = lora_app["images-per-s"] / at[("full", "app", target)]["images-per-s"]
    print(f"targets: LoRA compiled at batch {target} >= 40 % of the ceiling "
          f"({'met' if share >= 40 else 'missed'}), timing cost <= 3 % "
          f"({'met' if cost <= 3 else 'missed'})")
    return (f"gpu: lora share-of-ceiling={share:.1f}% timing-cost={cost:.1f}% "
            f"lora/full images-per-s={ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=0)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--batches", default="64,128,256", help="comma-separated batch sizes")
    parser.add_argument("--target-batch", type=int, default=TARGET_BATCH,
                        help="the batch of the last line (default 128, else the middle one)")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="app/bare runs, alternating")
    parser.add_argument("--matmul", type=int, default=8192, help="n of the ceiling's product")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--budget-s", type=float, default=0.0,
                        help="skip a strategy's compiled rows that would start after this "
                        "many seconds (0: never), so the last line comes within a time limit")
    parser.add_argument("--json", type=Path, help="also write the rows and figures here")
    args = parser.parse_args()
    args.t0 = time.perf_counter()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu (and a small model) instead")
    batches = sorted(int(b) for b in args.batches.split(","))
    target = args.target_batch if args.target_batch in batches else batches[len(batches) // 2]
    base = AppConfig.from_run_config({
        "model-name": args.model, "img-size": args.img_size, "patch-size": args.patch_size,
        "weights-path": "", "device": args.device, "precision": args.precision})
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    ceiling = matmul_ceiling(args.device, args.matmul)
    print(f"{name}, torch {torch.__version__}: bf16 {args.matmul}^3 matmul {ceiling:.1f} "
          f"TFLOP/s (the ceiling below); {args.model} at {args.img_size} px, "
          f"{args.precision}, {args.steps} steps a run", flush=True)
    print(HEADER, flush=True)
    rows = []
    for mode, strategy in STRATEGIES.items():
        rows += measure(mode, dataclasses.replace(base, strategy=strategy), batches, ceiling,
                        args)
        torch._dynamo.reset()  # drop the compiled graphs and the model they hold
        if args.device == "cuda":
            torch.cuda.empty_cache()
    last = report(rows, ceiling, args.device, target)
    if args.json:
        args.json.write_text(json.dumps({"device": name, "ceiling-tflops": ceiling,
                                         "rows": rows, "last-line": last}, indent=1))
    print(last)


if __name__ == "__main__":
    main()
