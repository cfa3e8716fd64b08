"""The offline default's frozen backbone: the ViT pretrained centrally on digits' ``public``
split (no client sees it), head dropped: hub weights are not reachable everywhere and LoRA on a
random frozen backbone learns little. Cached per recipe; ``fedvit-pretrain`` builds it by hand."""

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
from fedvit.data import partitions
from fedvit.data.loaders import make_loader
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
    """Everything the pretrained weights depend on (JSON-able; the file's metadata)."""
    return {"version": RECIPE_VERSION, "model-name": cfg.model_name, "img-size": cfg.img_size,
            "patch-size": cfg.patch_size, "seed": cfg.seed, "epochs": EPOCHS,
            "learning-rate": LEARNING_RATE, "batch-size": BATCH_SIZE,
            "weight-decay": WEIGHT_DECAY, "schedule": "one-cycle",
            "public-split": [partitions.DIGITS_SPLIT_SEED, partitions.DIGITS_TEST_FRACTION,
                             partitions.DIGITS_PUBLIC_FRACTION]}


def backbone_path(cfg: AppConfig) -> Path:
    key = hashlib.sha256(json.dumps(recipe(cfg), sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / f"{cfg.model_name}-digits-public-{cfg.img_size}px-{key}.safetensors"


def public_backbone(cfg: AppConfig) -> Path:
    """``backbone_path``, built first if missing (one builder at a time: a lock file beside it);
    ``ConfigError`` as ``build``, ``OSError``: the cache folder cannot be written."""
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
    """Pretrain a plain fp32 ViT from a random init on the CPU (only ``cfg``'s recipe keys
    count); write its headless state atomically to ``path``, the recipe as metadata. Returns
    ``{"public-accuracy", "train-loss", "seconds"}``; ``ConfigError``: not buildable."""
    from safetensors.torch import save_file
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    public = partitions.digits_splits()["public"]
    cols = partitions.columns_of(public)
    pcfg = dataclasses.replace(cfg, strategy="fedavg", device="cpu", precision="fp32",
                               weights_path="", pretrained=False)
    model = create_vit(pcfg, cols.num_classes)
    mean, std = input_stats(model)
    loader = make_loader(public, cols, pcfg, mean, std, shuffle=True, batch_size=BATCH_SIZE,
                         seed=cfg.seed)
    log(INFO, "fedvit: pretraining the backbone once on the public split (%d epochs); "
        "cached as %s", EPOCHS, path)
    start = last = time.perf_counter()

    def progress(epoch: int, loss: float) -> None:  # the first, the last, at most every 5 s
        nonlocal last
        now = time.perf_counter()
        if epoch in (1, EPOCHS) or now - last >= 5.0:
            last = now
            log(INFO, "fedvit: %s", progress_line("pretraining the backbone", epoch, EPOCHS,
                                                  loss, now - start))

    stats = train_epochs(model, loader, EPOCHS, LEARNING_RATE, "cpu", bf16=False,
                         weight_decay=WEIGHT_DECAY, one_cycle=True, on_epoch=progress)
    eval_loader = make_loader(public, cols, pcfg, mean, std, shuffle=False, batch_size=BATCH_SIZE)
    fit = evaluate(model, eval_loader, "cpu", bf16=False)
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if not k.startswith(HEAD + ".")}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"recipe": json.dumps(recipe(cfg))})
    return {"public-accuracy": fit["accuracy"], "train-loss": stats.loss,
            "seconds": time.perf_counter() - t0}


def progress_line(what: str, epoch: int, epochs: int, loss: float, elapsed_s: float) -> str:
    """``'<what>: epoch 10/100, loss 1.2346, 54 s left'``: epochs to go at the mean epoch time
    so far (``epoch`` is 1-based)."""
    left = elapsed_s / epoch * (epochs - epoch)
    return f"{what}: epoch {epoch}/{epochs}, loss {loss:.4f}, {left:.0f} s left"
