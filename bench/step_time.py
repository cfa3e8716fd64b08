"""Benchmark (a): local training step time, fedlora / fedavg, same model, data and device.

Builds four models of the configured ViT on one fixed batch and steps them in turn, one
step each, so that drifting machine load hits all alike; each step is the clients' own
``fedvit.model.train.train_step`` with their optimizer. Prints the median milliseconds per step
and per phase, and the ratios measured in this run:

- fedlora / fedavg (target on CPU for the default model: <= 0.75);
- floor / fedavg, where "floor" is the same frozen backbone with gradients flowing through
  every LoRA target but no adapter arithmetic (only the targets' biases and the head train):
  what a LoRA that cost nothing would reach on this model and machine;
- fedlora with peft's own LoRA forward, to show what ``FusedLoraLinear`` saves.

    .venv/bin/python bench/step_time.py [--steps 60] [--run-config "key=value ..."]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

import torch
from flwr.common.config import parse_config_args

from fedvit.config.appconfig import AppConfig
from fedvit.config.rules import target_modules
from fedvit.model.build import build_model, wrap_lora
from fedvit.model.tensors import count_parameters
from fedvit.model.train import PHASES, PhaseClock, make_optimizer, train_step


def build_variants(cfg: AppConfig, num_classes: int) -> dict[str, torch.nn.Module]:
    """fedavg, fedlora, fedlora with peft's forward, and the zero-cost-adapter floor."""
    plain = dataclasses.replace(cfg, strategy="fedavg")
    floor = build_model(plain, num_classes)
    targets = tuple(f"{t}.bias" for t in target_modules(cfg.lora_target_modules))
    for name, param in floor.named_parameters():
        param.requires_grad_(name.startswith("head.") or name.endswith(targets))
    return {
        "fedavg": build_model(plain, num_classes),
        "fedlora": build_model(dataclasses.replace(cfg, strategy="fedlora"), num_classes),
        "peft-fwd": wrap_lora(build_model(plain, num_classes), cfg, fused=False),
        "floor": floor,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default; simulated clients get 1)")
    parser.add_argument("--run-config", default="")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = parse_config_args([args.run_config]) if args.run_config else {}
    cfg = AppConfig.from_run_config({"weights-path": "", **overrides})
    device = cfg.torch_device
    print(f"model {cfg.model_name} img {cfg.img_size} batch {cfg.batch_size} on {device} "
          f"({torch.get_num_threads()} threads), {'bf16' if cfg.use_bf16 else 'fp32'}, "
          f"{args.steps} steps each, interleaved")
    models = {k: m.to(device).train() for k, m in build_variants(cfg, args.num_classes).items()}
    optimizers = {k: make_optimizer(m, cfg.learning_rate) for k, m in models.items()}
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size, generator=gen).to(device)
    y = torch.randint(0, args.num_classes, (cfg.batch_size,), generator=gen).to(device)
    samples: dict[str, list[dict[str, float]]] = {k: [] for k in models}
    for i in range(args.warmup + args.steps):
        for name, model in models.items():
            clock = PhaseClock(cuda=device == "cuda")
            clock.start()
            train_step(model, optimizers[name], x, y, clock, cfg.use_bf16)
            if i >= args.warmup:
                samples[name].append(clock.seconds)
    step = {k: statistics.median(sum(s.values()) for s in v) for k, v in samples.items()}
    for name, model in models.items():
        trainable = count_parameters(model)[1]
        phases = "  ".join(
            f"{p} {statistics.median(s[p] for s in samples[name]) * 1e3:6.2f}"
            for p in PHASES[1:]
        )
        print(f"{name:<9}{trainable:>10,} trainable  {step[name] * 1e3:7.2f} ms/step  ({phases})")
    print(f"ratio fedlora / fedavg step time: {step['fedlora'] / step['fedavg']:.3f} "
          "(target <= 0.75 on CPU)")
    print(f"ratio floor / fedavg (a LoRA that cost nothing): {step['floor'] / step['fedavg']:.3f}")
    print(f"ratio fedlora / peft's own forward: {step['fedlora'] / step['peft-fwd']:.3f}")


if __name__ == "__main__":
    main()
