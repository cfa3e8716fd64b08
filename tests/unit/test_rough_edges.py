"""Rough edges on the newcomer's path: pretraining shows progress, the
round's aggregated metrics average only what means something averaged."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import timm
import torch
from flwr.app import MetricRecord, RecordDict
from torch.utils.data import DataLoader, TensorDataset

from fedvit import keys
from fedvit.config.appconfig import APP_ROOT
from fedvit.model.pretrain import progress_line
from fedvit.model.train import train_epochs
from strategies.factory import aggregate_reply_metrics


def test_train_epochs_reports_every_epoch_with_its_loss():
    torch.manual_seed(0)
    model = timm.create_model("test_vit", img_size=16, patch_size=4, num_classes=3)
    data = TensorDataset(torch.randn(12, 3, 16, 16), torch.randint(0, 3, (12,)))
    seen: list[tuple[int, float]] = []
    stats = train_epochs(model, DataLoader(data, batch_size=4), 3, 1e-3, "cpu", bf16=False,
                         on_epoch=lambda epoch, loss: seen.append((epoch, loss)))
    assert [e for e, _ in seen] == [1, 2, 3]
    assert abs(sum(loss for _, loss in seen) / 3 - stats.loss) < 1e-6  # equal-sized epochs


def test_progress_line_gives_epoch_loss_and_time_left():
    assert progress_line("pretraining the backbone", 10, 100, 1.23456, 6.0) == (
        "pretraining the backbone: epoch 10/100, loss 1.2346, 54 s left")


def _reply(pid: int, examples: int, loss: float) -> RecordDict:
    return RecordDict({"metrics": MetricRecord({
        "num-examples": examples, "train-loss": loss, "val-accuracy": 0.5 + pid / 10,
        "partition-id": pid, keys.COMPUTE_START: 1.7e9 + pid, keys.COMPUTE_END: 1.7e9 + 5 + pid,
        "time-train": 2.0 + pid, "link-down-mbps": 10.0 * (pid + 1), "examples-per-s": 100.0,
        "bytes-down-tensor": 1000, "bytes-down-msg": 1100, "bytes-up-tensor": 1000,
        "bytes-up-msg": 1150 + pid})})


def test_aggregate_averages_only_losses_and_accuracies():
    agg = aggregate_reply_metrics([_reply(0, 30, 1.0), _reply(1, 10, 2.0)], "num-examples")
    assert dict(agg) == {
        "train-loss": 0.75 * 1.0 + 0.25 * 2.0, "val-accuracy": 0.75 * 0.5 + 0.25 * 0.6,
        "num-examples": 40, "bytes-down-tensor": 2000, "bytes-down-msg": 2200,
        "bytes-up-tensor": 2000, "bytes-up-msg": 2301}


def test_stop_superlink_stops_only_this_projects_one(tmp_path):
    """Two processes that look like managed SuperLinks of two Flower homes: the script
    stops the one of the home it is given, by PID, and leaves the other running."""

    def fake(home: Path) -> subprocess.Popen:
        name = (f"flower-superlink --insecure --simulation --log-file "
                f"{home}/local-superlink/superlink.log")
        return subprocess.Popen(["bash", "-c", f'exec -a "{name}" sleep 60'])

    ours, theirs = fake(tmp_path / "ours"), fake(tmp_path / "theirs")
    try:
        time.sleep(0.3)
        out = subprocess.run([str(APP_ROOT / "scripts" / "stop-superlink")], text=True,
                             capture_output=True, env={**os.environ,
                                                       "FLWR_HOME": str(tmp_path / "ours")})
        assert f"(PID {ours.pid})" in out.stdout, out.stdout + out.stderr
        assert ours.wait(timeout=10) == -signal.SIGTERM
        assert theirs.poll() is None
    finally:
        for proc in (ours, theirs):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
