"""Local training and evaluation loops, with per-phase timers."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

PHASES = ("data", "forward", "backward", "optimizer")


class Marker(Protocol):
    """A point on a device's timeline, as ``torch.cuda.Event(enable_timing=True)`` is."""

    def record(self) -> None:
        """Mark the point the stream has been queued up to now."""

    def synchronize(self) -> None:
        """Wait until the stream has reached this point."""

    def elapsed_time(self, end: Marker) -> float:
        """Milliseconds from this point to ``end`` (both recorded and reached)."""


def cuda_marker() -> Marker:
    """A timing CUDA event: the default marker of a ``PhaseClock`` on CUDA."""
    return torch.cuda.Event(enable_timing=True)


class PhaseClock:
    """Accumulates seconds per phase of local training.

    On the CPU every boundary reads ``time.perf_counter`` (the work is done when the call
    returns). On CUDA the work is queued, so a boundary records a marker (a timing CUDA
    event) on the stream instead of waiting for the GPU, and ``settle`` waits once for the
    last one and adds the intervals between them: the phases are the GPU timeline's, and
    the CPU keeps queueing kernels while the GPU works. A phase the CPU holds up (e.g.
    loading a batch while the GPU idles) shows as the GPU's idle time in that phase.

    Args:
        cuda: time the GPU's timeline with markers (else the CPU's clock).
        marker: makes one unrecorded marker (default ``cuda_marker``); anything with
            ``record``, ``synchronize`` and ``elapsed_time`` (milliseconds) will do, e.g.
            to test the bookkeeping without a GPU. Giving one implies marker timing.
    """

    def __init__(self, cuda: bool, marker: Callable[[], Marker] | None = None) -> None:
        self.cuda = cuda
        self._marker = marker or (cuda_marker if cuda else None)
        self._seconds = dict.fromkeys(PHASES, 0.0)
        self._last = 0.0
        self._marks: list[tuple[str | None, Marker]] = []  # (phase it ends or None, marker)

    @property
    def seconds(self) -> dict[str, float]:
        """Seconds so far per phase (``PHASES``); with markers, settled first."""
        self.settle()
        return self._seconds

    def start(self) -> None:
        """Start timing the next phase now (the time since the last boundary is no phase's)."""
        if self._marker is None:
            self._last = time.perf_counter()
        else:
            self._mark(None)

    def lap(self, phase: str) -> None:
        """Add the seconds since the last ``start``/``lap`` to a phase; start the next.

        Args:
            phase: one of ``PHASES``.

        Raises:
            KeyError: ``phase`` is not one of ``PHASES``.
        """
        if phase not in self._seconds:
            raise KeyError(phase)
        if self._marker is None:
            now = time.perf_counter()
            self._seconds[phase] += now - self._last
            self._last = now
        else:
            self._mark(phase)

    def settle(self) -> None:
        """Wait for the last marker (one synchronisation) and add every interval recorded
        since the last ``settle`` to its phase. Nothing to do on the CPU's clock."""
        if len(self._marks) < 2:
            return
        self._marks[-1][1].synchronize()
        for (_, begin), (phase, end) in itertools.pairwise(self._marks):
            if phase is not None:
                self._seconds[phase] += begin.elapsed_time(end) / 1e3
        self._marks = self._marks[-1:]  # the next interval begins at the last boundary

    def _mark(self, phase: str | None) -> None:
        marker = self._marker()
        marker.record()
        self._marks.append((phase, marker))


@dataclass
class TrainStats:
    """What one local training run did.

    Args:
        num_examples: examples trained on, over all epochs.
        loss: their mean loss.
        wall_s: seconds the run took.
        phases: seconds per phase (``PHASES``).
    """

    num_examples: int
    loss: float
    wall_s: float
    phases: dict[str, float]

    @property
    def examples_per_s(self) -> float:
        """Training throughput, examples per second (0 for a run that took no time)."""
        return self.num_examples / self.wall_s if self.wall_s > 0 else 0.0


def autocast(device: str, bf16: bool):
    """bf16 autocast when asked for, a no-op context otherwise.

    Args:
        device: ``'cpu'`` or ``'cuda'``.
        bf16: autocast to bfloat16.
    """
    return torch.autocast(device, dtype=torch.bfloat16) if bf16 else nullcontext()


def _batches(loader: DataLoader, device: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    non_blocking = device == "cuda"
    for images, labels in loader:
        yield images.to(device, non_blocking=non_blocking), labels.to(
            device, non_blocking=non_blocking
        )


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW over the parameters that require grad, fused: one kernel updates every tensor
    (torch's CPU default loops over them, which on a small ViT costs a quarter of a step).

    Args:
        model: the model to train.
        lr: the learning rate.
        weight_decay: AdamW's decoupled weight decay.

    Returns:
        The optimizer.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def compile_model(model: nn.Module) -> nn.Module:
    """Compile a model in place for ``compile`` = true: ``nn.Module.compile``, so calls run
    through ``torch.compile`` while the module, its parameters and their names stay as
    they are (what is exchanged does not change). ``dynamic=True``: one graph per mode
    (training, evaluation) for every batch size, so an epoch's last, smaller batch does not
    compile a second one. Compiling happens at the first call in each mode.

    Args:
        model: the model.

    Returns:
        The same model.
    """
    model.compile(dynamic=True)
    return model


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    clock: PhaseClock,
    bf16: bool,
) -> torch.Tensor:
    """One optimizer step on one batch; laps the forward, backward and optimizer phases.

    Args:
        model: the model, in training mode, on the batch's device.
        optimizer: its optimizer (``make_optimizer``).
        images: ``(B, 3, S, S)`` float32, normalised.
        labels: ``(B,)`` int64 class indices.
        clock: the phase clock to lap.
        bf16: autocast the forward pass to bfloat16.

    Returns:
        The batch's mean cross-entropy loss, a detached scalar.
    """
    with autocast(images.device.type, bf16):
        loss = nn.functional.cross_entropy(model(images), labels)
    clock.lap("forward")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clock.lap("backward")
    optimizer.step()
    clock.lap("optimizer")
    return loss.detach()


def train_epochs(
    model: nn.Module,
    loader: DataLoader,
    epochs: int,
    lr: float,
    device: str,
    bf16: bool,
    weight_decay: float = 0.0,
    one_cycle: bool = False,
    on_epoch: Callable[[int, float], None] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    clock: PhaseClock | None = None,
) -> TrainStats:
    """Train the parameters that require grad with AdamW; time every phase.

    Args:
        model: the model (moved to ``device``, set to training mode).
        loader: batches of images ``(B, 3, S, S)`` float32 normalised and labels
            ``(B,)`` int64.
        epochs: passes over ``loader``.
        lr: the learning rate (the peak rate with ``one_cycle``).
        device: ``'cpu'`` or ``'cuda'``.
        bf16: autocast the forward passes to bfloat16.
        weight_decay: AdamW's decoupled weight decay (only when an optimizer is made).
        one_cycle: anneal the rate over all steps (used by central pretraining).
        on_epoch: called as ``on_epoch(epoch, loss)`` after each epoch (1-based) with its
            mean loss.
        optimizer: one made by ``make_optimizer`` for this model already (else one is made).
        clock: the phase clock (default: ``PhaseClock`` of ``device``: CUDA events on a
            GPU); settled once per epoch.

    Returns:
        Examples seen, mean loss, seconds and seconds per phase.
    """
    model.to(device).train()
    optimizer = optimizer or make_optimizer(model, lr, weight_decay)
    schedule = (
        torch.optim.lr_scheduler.OneCycleLR(
            optimizer, lr, total_steps=epochs * len(loader), pct_start=0.1
        )
        if one_cycle
        else None
    )
    clock = clock or PhaseClock(cuda=device == "cuda")
    # Losses stay on the device (float64, summed as Python floats were): reading one per
    # step would wait for the GPU every step. Read once per epoch, after the clock settled.
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    if device == "cuda":
        torch.cuda.synchronize()  # what was queued before (the model's copy) is not training
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        clock.start()
        epoch_loss = torch.zeros((), dtype=torch.float64, device=device)
        epoch_seen = 0
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
    """Loss and accuracy over a loader, without gradients, in evaluation mode.

    Args:
        model: the model (moved to ``device``).
        loader: batches of images ``(B, 3, S, S)`` float32 normalised and labels
            ``(B,)`` int64.
        device: ``'cpu'`` or ``'cuda'``.
        bf16: autocast the forward passes to bfloat16 (the loss is taken in float32).

    Returns:
        ``{"loss": mean cross-entropy, "accuracy": fraction correct, "num-examples": n}``.
    """
    model.to(device).eval()
    total_loss, correct, seen = 0.0, 0, 0
    for images, labels in _batches(loader, device):
        with autocast(device, bf16):
            logits = model(images)
        total_loss += nn.functional.cross_entropy(logits.float(), labels, reduction="sum").item()
        correct += (logits.argmax(dim=1) == labels).sum().item()
        seen += len(labels)
    return {
        "loss": total_loss / max(seen, 1),
        "accuracy": correct / max(seen, 1),
        "num-examples": seen,
    }
