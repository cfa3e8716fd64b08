"""Benchmark (c), on a GPU: ViT-B/16 at 224 px, LoRA training throughput and memory.

Random weights and synthetic CIFAR-shaped data upsampled to 224 px (no download). Prints
LoRA training images/s, the achieved bf16 TFLOP/s and its share of the GPU's dense bf16
peak, and the peak GPU memory of LoRA training at batch 64 against full fine-tuning.

FLOPs per image: forward from a multiply-accumulate count of the model (2 FLOPs each);
LoRA training = forward + backward through activations (~2x forward, no weight gradients
for frozen layers), full fine-tuning = 3x forward.

    .venv/bin/python bench/gpu_vit_b.py [--batch 64] [--steps 30]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from fedvit.config import AppConfig
from fedvit.model import build_model
from fedvit.train import PhaseClock, make_optimizer, train_step

# Dense bf16 tensor-core peak (TFLOP/s) by device name fragment.
PEAK_BF16 = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def forward_flops(model: torch.nn.Module, img: int) -> float:
    """2 x multiply-accumulates of one 224 px forward pass, counted by torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, img, img, device="cuda")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return float(counter.get_total_flops())


def train_steps(cfg: AppConfig, batch: int, steps: int) -> tuple[float, int]:
    """(images/s, peak bytes) of ``steps`` bf16 training steps."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = build_model(cfg, 100).cuda().train()
    opt = make_optimizer(model, 1e-4)
    clock = PhaseClock(cuda=True)  # the clients' own step, synchronised per phase as theirs
    x = torch.randn(batch, 3, 32, 32, device="cuda")
    x = torch.nn.functional.interpolate(x, size=224, mode="bilinear")
    y = torch.randint(0, 100, (batch,), device="cuda")
    for i in range(steps + 5):
        if i == 5:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        clock.start()
        train_step(model, opt, x, y, clock, bf16=True)
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0), torch.cuda.max_memory_allocated()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark needs a GPU")
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    base = AppConfig.from_run_config({
        "model-name": "vit_base_patch16_224", "img-size": 224, "patch-size": 0,
        "weights-path": "", "device": "cuda", "precision": "bf16"})
    lora_cfg = dataclasses.replace(base, strategy="fedlora")
    fwd = forward_flops(build_model(lora_cfg, 100).cuda().eval(), 224)
    lora_ips, lora_mem = train_steps(lora_cfg, args.batch, args.steps)
    full_ips, full_mem = train_steps(dataclasses.replace(base, strategy="fedavg"),
                                     args.batch, args.steps)
    tflops = lora_ips * 3 * fwd / 1e12 * 2 / 3  # forward + activation backward
    print(f"{name}: ViT-B/16 224 px, batch {args.batch}, bf16 autocast")
    print(f"LoRA training: {lora_ips:.0f} images/s, {tflops:.0f} TFLOP/s achieved"
          + (f", {100 * tflops / peak:.1f} % of the {peak:.0f} TFLOP/s bf16 peak" if peak
             else ""))
    print(f"full fine-tuning: {full_ips:.0f} images/s; LoRA / full throughput "
          f"{lora_ips / full_ips:.2f}")
    print(f"peak GPU memory: LoRA {lora_mem / 2**30:.2f} GiB, full {full_mem / 2**30:.2f} "
          f"GiB, ratio {lora_mem / full_mem:.2f}")


if __name__ == "__main__":
    main()
