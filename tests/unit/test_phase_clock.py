"""PhaseClock: the CPU's clock as before, and the marker (CUDA event) bookkeeping, tested
without a GPU through an injected marker on a timeline that only the test moves."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedvit.model import train
from fedvit.model.train import PHASES, PhaseClock, make_optimizer, train_epochs, train_step


class Timeline:
    """A device timeline in whole milliseconds: every ``record`` lands ``step_ms`` after the
    previous one, or where ``at`` puts it; ``waits`` counts synchronisations."""

    def __init__(self, step_ms: int = 1) -> None:
        self.now, self.step_ms, self.waits, self.recorded = 0, step_ms, 0, 0

    def marker(self) -> Marker:
        return Marker(self)


class Marker:
    def __init__(self, timeline: Timeline) -> None:
        self.timeline, self.at = timeline, None

    def record(self) -> None:
        self.timeline.now += self.timeline.step_ms
        self.timeline.recorded += 1
        self.at = self.timeline.now

    def synchronize(self) -> None:
        assert self.at is not None, "waiting for a marker never recorded"
        self.timeline.waits += 1

    def elapsed_time(self, end: Marker) -> float:
        assert self.at is not None and end.at is not None
        return float(end.at - self.at)


def test_cpu_clock_reads_perf_counter_at_every_boundary(monkeypatch):
    ticks = iter([10.0, 11.0, 13.0, 16.0, 20.0, 30.0, 30.5])
    monkeypatch.setattr(train.time, "perf_counter", lambda: next(ticks))
    clock = PhaseClock(cuda=False)
    clock.start()  # 10
    for phase in PHASES:  # 11, 13, 16, 20
        clock.lap(phase)
    clock.start()  # 30: the 10 s since the last lap are no phase's
    clock.lap("data")  # 30.5
    clock.settle()  # nothing to wait for, no clock read
    assert clock.seconds == {"data": 1.5, "forward": 2.0, "backward": 3.0, "optimizer": 4.0}
    with pytest.raises(StopIteration):
        next(ticks)  # every reading was a boundary's: no more, no less
    with pytest.raises(KeyError):
        clock.lap("loading")


def test_markers_are_read_once_per_settle_and_add_each_interval_to_its_phase():
    timeline = Timeline()
    clock = PhaseClock(cuda=True, marker=timeline.marker)
    clock.start()  # t=1
    for _ in range(3):  # each lap 1 ms after the last boundary
        for phase in PHASES:
            clock.lap(phase)
        timeline.now += 5  # work between the step's end and the next start: no phase's
        clock.start()
    assert timeline.waits == 0 and timeline.recorded == 1 + 3 * 5  # nothing read yet
    clock.settle()
    assert timeline.waits == 1
    assert clock.seconds == dict.fromkeys(PHASES, 0.003)
    assert timeline.waits == 1  # reading settled seconds waits for nothing more
    timeline.now += 100  # between settles: the next interval begins at the last boundary
    clock.lap("data")
    assert clock.seconds["data"] == pytest.approx(0.003 + 0.101)
    assert timeline.waits == 2
    with pytest.raises(KeyError):
        clock.lap("loading")


def test_marker_phases_add_up_to_the_timeline_of_an_epoch_when_nothing_falls_between():
    timeline = Timeline(step_ms=7)
    clock = PhaseClock(cuda=True, marker=timeline.marker)
    clock.start()
    first = timeline.now
    for _ in range(4):
        clock.lap("data")
        clock.lap("forward")
        clock.lap("backward")
        clock.lap("optimizer")
    clock.settle()
    assert sum(clock.seconds.values()) == pytest.approx((timeline.now - first) / 1e3)


def _tiny(seed: int = 0) -> tuple[nn.Module, DataLoader]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    data = TensorDataset(torch.randn(10, 3, 2, 2), torch.randint(0, 3, (10,)))
    return model, DataLoader(data, batch_size=4)  # batches of 4, 4, 2


def test_train_epochs_settles_once_per_epoch_and_times_every_step():
    model, loader = _tiny()
    timeline = Timeline()
    stats = train_epochs(model, loader, 3, 1e-2, "cpu", bf16=False,
                         clock=PhaseClock(cuda=True, marker=timeline.marker))
    assert timeline.waits == 3  # one synchronisation per epoch
    assert timeline.recorded == 3 * (1 + 3 * 5)  # start, then 4 laps and a start per step
    assert stats.phases == pytest.approx(dict.fromkeys(PHASES, 3 * 3 * 0.001))
    assert stats.num_examples == 30


def test_train_epochs_on_the_cpu_reports_the_loss_it_always_did():
    """Losses are summed on the device now: on the CPU the result is the same float, bit for
    bit, as summing ``loss.item() * n`` in Python (the loop before)."""
    model, loader = _tiny()
    epochs: list[float] = []
    stats = train_epochs(model, loader, 2, 1e-2, "cpu", bf16=False,
                         on_epoch=lambda e, loss: epochs.append(loss))
    reference, batches = _tiny()
    optimizer, clock = make_optimizer(reference, 1e-2), PhaseClock(cuda=False)
    total, per_epoch = 0.0, []
    for _ in range(2):
        epoch = 0.0
        for images, labels in batches:
            item = train_step(reference, optimizer, images, labels, clock, False).item() * len(
                labels)
            total, epoch = total + item, epoch + item
        per_epoch.append(epoch / 10)
    assert stats.loss == total / 20 and epochs == per_epoch
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters(),
                                                 strict=True))
    assert set(stats.phases) == set(PHASES) and stats.wall_s > 0


def test_compile_model_keeps_the_module_and_the_names_it_exchanges():
    """``compile`` = true must not rename what travels (``torch.compile(model)`` would wrap
    it and prefix every name with ``_orig_mod.``); nothing compiles until it is called."""
    from fedvit.config.appconfig import AppConfig
    from fedvit.model.cache import cached_model
    from fedvit.model.tensors import exchanged_state
    from fedvit.model.train import compile_model

    model = cached_model(AppConfig.from_run_config({"weights-path": ""}), 10)
    before = {k: (v.shape, v.dtype) for k, v in exchanged_state(model).items()}
    names = list(model.state_dict())
    assert compile_model(model) is model
    assert {k: (v.shape, v.dtype) for k, v in exchanged_state(model).items()} == before
    assert list(model.state_dict()) == names and before
