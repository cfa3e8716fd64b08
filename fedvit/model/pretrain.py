"""The offline default's frozen backbone: central pretraining on the public digits split.

Hub weights cannot be downloaded everywhere, and LoRA on a randomly initialised frozen
backbone learns little. So, as a server holding public data would, we pretrain the ViT
centrally on digits' ``public`` split, which no client ever sees, then drop its head.
The result is deterministic for a given recipe (model, sizes, seed) and cached under
``$FEDVIT_CACHE`` (default ``~/.cache/fedvit``); ``fedvit-pretrain`` builds it by hand.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import time
from logging import INFO
from pathlib import Path

import torch
from flwr.common.logger import log

from fedvit.config.appconfig import AppConfig
from fedvit.config.paths import cache_dir
from fedvit.data.loaders import make_loader
from fedvit.data.partitions import (
    DIGITS_PUBLIC_FRACTION,
    DIGITS_SPLIT_SEED,
    DIGITS_TEST_FRACTION,
    columns_of,
    digits_splits,
)
from fedvit.files import atomic_path
from fedvit.model.backbone import create_vit
from fedvit.model.tensors import HEAD, input_stats
from fedvit.model.train import evaluate, train_epochs

RECIPE_VERSION = 2  # 2: fused AdamW
EPOCHS = 100
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 0.05
BATCH_SIZE = 32


def recipe(cfg: AppConfig) -> dict:
    """Everything the pretrained weights depend on (written into the file's metadata).

    Args:
        cfg: the run config (model, sizes and seed are read).

    Returns:
        A JSON-able dict: recipe version, model keys, training knobs, the public split.
    """
    return {
        "version": RECIPE_VERSION,
        "model-name": cfg.model_name,
        "img-size": cfg.img_size,
        "patch-size": cfg.patch_size,
        "seed": cfg.seed,
        "epochs": EPOCHS,
        "learning-rate": LEARNING_RATE,
        "batch-size": BATCH_SIZE,
        "weight-decay": WEIGHT_DECAY,
        "schedule": "one-cycle",
        "public-split": [DIGITS_SPLIT_SEED, DIGITS_TEST_FRACTION, DIGITS_PUBLIC_FRACTION],
    }


def backbone_path(cfg: AppConfig) -> Path:
    """Where the public backbone of a recipe is cached (it may not exist yet).

    Args:
        cfg: the run config (its ``recipe``).

    Returns:
        ``$FEDVIT_CACHE/<model>-digits-public-<img-size>px-<recipe digest>.safetensors``.
    """
    key = hashlib.sha256(json.dumps(recipe(cfg), sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / f"{cfg.model_name}-digits-public-{cfg.img_size}px-{key}.safetensors"


def public_backbone(cfg: AppConfig) -> Path:
    """The cached backbone file, built first if missing (one builder at a time: a lock
    file beside it).

    Args:
        cfg: the run config.

    Returns:
        The path of the headless backbone's ``.safetensors`` file.

    Raises:
        ConfigError: the ViT cannot be built at the configured sizes.
        OSError: the cache folder cannot be written.
    """
    path = backbone_path(cfg)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            build(cfg, path)
    return path


def build(cfg: AppConfig, path: Path) -> dict[str, float]:
    """Pretrain on digits' public split on the CPU and write the headless backbone.

    Args:
        cfg: the run config (its recipe keys; strategy, device, precision and weights
            are overridden: plain fp32 ViT on the CPU from a random init).
        path: the ``.safetensors`` file to write (atomically), with the recipe as metadata.

    Returns:
        ``{"public-accuracy": fraction, "train-loss": mean loss, "seconds": wall time}``.

    Raises:
        ConfigError: the ViT cannot be built at the configured sizes.
    """
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    public = digits_splits()["public"]
    cols = columns_of(public)
    pcfg = dataclasses.replace(cfg, strategy="fedavg", device="cpu", precision="fp32",
                               weights_path="", pretrained=False)
    model = create_vit(pcfg, cols.num_classes)
    mean, std = input_stats(model)
    loader = make_loader(public, cols, pcfg, mean, std, shuffle=True, batch_size=BATCH_SIZE,
                         seed=cfg.seed)
    log(INFO, "fedvit: pretraining the backbone once on the public split (%d epochs); "
        "cached as %s", EPOCHS, path)
    stats = train_epochs(model, loader, EPOCHS, LEARNING_RATE, "cpu", bf16=False,
                         weight_decay=WEIGHT_DECAY, one_cycle=True,
                         on_epoch=Progress(EPOCHS, "pretraining the backbone"))
    eval_loader = make_loader(public, cols, pcfg, mean, std, shuffle=False,
                              batch_size=BATCH_SIZE)
    fit = evaluate(model, eval_loader, "cpu", bf16=False)
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if not k.startswith(HEAD + ".")}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"recipe": json.dumps(recipe(cfg))})
    return {"public-accuracy": fit["accuracy"], "train-loss": stats.loss,
            "seconds": time.perf_counter() - t0}


class Progress:
    """``on_epoch`` callback: logs epoch, loss and the time left (from the mean epoch so far)
    at the first and last epoch and at most every ``every_s`` seconds between.

    Args:
        epochs: how many epochs the run has.
        what: what is trained, for the log line.
        every_s: the least seconds between two log lines (first and last always log).
    """

    def __init__(self, epochs: int, what: str, every_s: float = 5.0) -> None:
        self.epochs, self.what, self.every_s = epochs, what, every_s
        self.t0 = self.last = time.perf_counter()

    def __call__(self, epoch: int, loss: float) -> None:
        """Log an epoch if it is time to.

        Args:
            epoch: the epoch just done, 1-based.
            loss: its mean loss.
        """
        now = time.perf_counter()
        if epoch in (1, self.epochs) or now - self.last >= self.every_s:
            self.last = now
            log(INFO, "fedvit: %s", progress_line(self.what, epoch, self.epochs, loss,
                                                  now - self.t0))


def progress_line(what: str, epoch: int, epochs: int, loss: float, elapsed_s: float) -> str:
    """One progress line.

    Args:
        what: what is trained.
        epoch: the epoch just done, 1-based.
        epochs: how many epochs the run has.
        loss: that epoch's mean loss.
        elapsed_s: seconds since training started.

    Returns:
        ``'<what>: epoch 10/100, loss 1.2346, 54 s left'`` (time left: the epochs to go
        at the mean epoch time so far).
    """
    left = elapsed_s / epoch * (epochs - epoch)
    return f"{what}: epoch {epoch}/{epochs}, loss {loss:.4f}, {left:.0f} s left"
