"""Benchmark (a): local training step time, fedlora / fedavg, same model, data and device.

Prints the median seconds per optimizer step of each strategy measured in this one run and
their ratio (target on CPU for the default model: <= 0.75). Usage:

    .venv/bin/python bench/step_time.py [--steps 30] [--run-config "key=value ..."]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
from flwr.common.config import parse_config_args

from fedvit.config import AppConfig
from fedvit.model import build_model, count_parameters
from fedvit.train import autocast


def step_times(cfg: AppConfig, num_classes: int, steps: int, warmup: int = 5) -> list[float]:
    """Seconds of each full step (forward, backward, optimizer) on one fixed batch."""
    device = cfg.torch_device
    model = build_model(cfg, num_classes).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size, generator=gen).to(device)
    y = torch.randint(0, num_classes, (cfg.batch_size,), generator=gen).to(device)
    out = []
    for i in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast(device, cfg.use_bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--run-config", default="")
    args = parser.parse_args()
    overrides = parse_config_args([args.run_config]) if args.run_config else {}
    base = AppConfig.from_run_config({"weights-path": "", **overrides})
    print(f"model {base.model_name} img {base.img_size} batch {base.batch_size} on "
          f"{base.torch_device} ({torch.get_num_threads()} threads), "
          f"{'bf16' if base.use_bf16 else 'fp32'}")
    medians = {}
    # Interleave the two strategies so drifting machine load hits both alike.
    samples: dict[str, list[float]] = {"fedavg": [], "fedlora": []}
    for _ in range(3):
        for strategy in samples:
            cfg = dataclasses.replace(base, strategy=strategy)
            samples[strategy] += step_times(cfg, args.num_classes, args.steps // 3)
    for strategy, times in samples.items():
        cfg = dataclasses.replace(base, strategy=strategy)
        total, trainable = count_parameters(build_model(cfg, args.num_classes))
        medians[strategy] = statistics.median(times)
        print(f"{strategy:<8} {trainable:>12,} trainable  median {medians[strategy] * 1e3:8.2f} "
              f"ms/step over {len(times)} steps")
    print(f"ratio fedlora / fedavg step time: {medians['fedlora'] / medians['fedavg']:.3f} "
          "(target <= 0.75 on CPU)")


if __name__ == "__main__":
    main()
