"""Local training and evaluation loops, with per-phase timers."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.utils.data import DataLoader

PHASES = ("data", "forward", "backward", "optimizer")


class PhaseClock:
    """Seconds per phase (``PHASES``) of local training: on the CPU by ``time.perf_counter``;
    with ``cuda`` or a ``marker`` factory (default: timing CUDA events; a fake needs their
    ``record``, ``synchronize``, ``elapsed_time`` in ms), by markers recorded on the queue without
    waiting, read by ``settle`` after one synchronisation: the GPU's timeline, where time the
    CPU holds it up (loading a batch) is idle GPU time."""

    def __init__(self, cuda: bool, marker: Callable[[], torch.cuda.Event] | None = None) -> None:
        self._marker = marker or (partial(torch.cuda.Event, enable_timing=True) if cuda
                                  else None)
        self._seconds = dict.fromkeys(PHASES, 0.0)
        self._last = 0.0
        self._marks: list[tuple[str | None, torch.cuda.Event]] = []  # (phase it ends, marker)

    @property
    def seconds(self) -> dict[str, float]:
        self.settle()
        return self._seconds

    def start(self) -> None:
        """Start timing the next phase (the time since the last boundary is no phase's)."""
        self._boundary(None)

    def lap(self, phase: str) -> None:
        """Add the time since the last boundary to ``phase`` (``KeyError``: not a phase)."""
        if phase not in self._seconds:
            raise KeyError(phase)
        self._boundary(phase)

    def settle(self) -> None:
        """With markers: wait for the last one (one synchronisation), add each interval since
        the last ``settle`` to its phase."""
        if len(self._marks) < 2:
            return
        self._marks[-1][1].synchronize()
        for (_, begin), (phase, end) in itertools.pairwise(self._marks):
            if phase is not None:
                self._seconds[phase] += begin.elapsed_time(end) / 1e3
        self._marks = self._marks[-1:]  # the next interval begins at the last boundary

    def _boundary(self, phase: str | None) -> None:
        if self._marker is not None:
            self._marks.append((phase, self._marker()))
            self._marks[-1][1].record()
            return
        now = time.perf_counter()
        if phase is not None:
            self._seconds[phase] += now - self._last
        self._last = now


@dataclass
class TrainStats:
    """One local training run: examples over all epochs, mean loss."""

    num_examples: int
    loss: float
    wall_s: float
    phases: dict[str, float]

    @property
    def examples_per_s(self) -> float:
        return self.num_examples / self.wall_s if self.wall_s > 0 else 0.0


def _batches(loader: DataLoader, device: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for images, labels in loader:
        yield (images.to(device, non_blocking=device == "cuda"),
               labels.to(device, non_blocking=device == "cuda"))


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """Fused AdamW over the parameters that require grad (one kernel updates every tensor;
    torch's CPU default loops over them, a quarter of a small ViT's step)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def compile_model(model: nn.Module) -> nn.Module:
    """In place (names stay); ``dynamic``: an epoch's smaller last batch compiles no other."""
    model.compile(dynamic=True)
    return model


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor, clock: PhaseClock, bf16: bool) -> torch.Tensor:
    """One optimizer step on ``(B, 3, S, S)`` float32 images and ``(B,)`` int64 labels,
    lapping forward, backward and optimizer; returns the detached mean cross-entropy."""
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = nn.functional.cross_entropy(model(images), labels)
    clock.lap("forward")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clock.lap("backward")
    optimizer.step()
    clock.lap("optimizer")
    return loss.detach()


def train_epochs(model: nn.Module, loader: DataLoader, epochs: int, lr: float, device: str,
                 bf16: bool, weight_decay: float = 0.0, one_cycle: bool = False,
                 on_epoch: Callable[[int, float], None] | None = None,
                 optimizer: torch.optim.Optimizer | None = None,
                 clock: PhaseClock | None = None) -> TrainStats:
    """Train the parameters that require grad on ``device``, timing phases (``clock``, default
    ``PhaseClock`` of ``device``, settled per epoch). ``lr``: the peak with ``one_cycle``;
    ``weight_decay``: an optimizer made here's; ``on_epoch(epoch from 1, mean loss)``: per epoch."""
    model.to(device).train()
    optimizer = optimizer or make_optimizer(model, lr, weight_decay)
    schedule = (torch.optim.lr_scheduler.OneCycleLR(
        optimizer, lr, total_steps=epochs * len(loader), pct_start=0.1) if one_cycle else None)
    clock = clock or PhaseClock(cuda=device == "cuda")
    # Losses stay on the device (float64, summed as Python floats were): reading one per
    # step would wait for the GPU every step. Read once per epoch, after the clock settled.
    total_loss, seen = torch.zeros((), dtype=torch.float64, device=device), 0
    if device == "cuda":
        torch.cuda.synchronize()  # what was queued before (the model's copy) is not training
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        clock.start()
        epoch_loss, epoch_seen = torch.zeros((), dtype=torch.float64, device=device), 0
        for images, labels in _batches(loader, device):
            clock.lap("data")
            loss = train_step(model, optimizer, images, labels, clock, bf16)
            if schedule is not None:
                schedule.step()
                clock.lap("optimizer")
            item = loss.double() * len(labels)
            total_loss += item
            epoch_loss += item
            seen, epoch_seen = seen + len(labels), epoch_seen + len(labels)
            clock.start()
        clock.settle()  # the epoch's one synchronisation on CUDA
        if on_epoch is not None:
            on_epoch(epoch, epoch_loss.item() / max(epoch_seen, 1))
    mean_loss = total_loss.item() / max(seen, 1)  # the device is done with the run now
    return TrainStats(seen, mean_loss, time.perf_counter() - t0, clock.seconds)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: str, bf16: bool) -> dict[str, float]:
    """``{"loss": mean cross-entropy (float32), "accuracy": fraction, "num-examples": n}`` in
    eval mode on ``device``, without gradients."""
    model.to(device).eval()
    total_loss, correct, seen = 0.0, 0, 0
    for images, labels in _batches(loader, device):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            logits = model(images)
        total_loss += nn.functional.cross_entropy(logits.float(), labels, reduction="sum").item()
        correct += (logits.argmax(dim=1) == labels).sum().item()
        seen += len(labels)
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1),
            "num-examples": seen}
