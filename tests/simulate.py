"""Test settings for whole federations (the harness itself is tools.simulate)."""

from __future__ import annotations

from tools.simulate import client_app, simulate, stopped

# Small and fast: the tiny timm ViT, random init, few examples per step.
FAST = {
    "model-name": "test_vit",
    "img-size": 16,
    "patch-size": 4,
    "weights-path": "",
    "num-server-rounds": 2,
    "local-epochs": 1,
    "batch-size": 32,
    "fraction-evaluate": 0.0,
}

# One relative value per path-valued key: refused in-process and under `flwr run` alike.
RELATIVE = {
    "weights-path": "../weights.safetensors",
    "dataset": "./my-data",
    "outputs-dir": "rel-out",
    "resume-from": "runs/20261129-fedlora",
}

__all__ = ["FAST", "RELATIVE", "client_app", "simulate", "stopped"]
