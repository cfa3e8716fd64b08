"""A fresh ClientApp process's cold start: what it imports and the model cache.

In deployment Flower 1.41 runs every message in a fresh process; the model is loaded from
``torch.export`` programs exported from the timm+peft build (``fedvit.model.cache``). These
tests hold the artefact to the build: same tensors, same values, same training step.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from fedvit.config.appconfig import AppConfig
from fedvit.model.build import build_model
from fedvit.model.cache import (
    MODEL_KEYS,
    ExportedModel,
    cached_model,
    mode_paths,
    model_key,
    model_path,
)
from fedvit.model.tensors import backbone_fingerprint, exchanged_state, input_stats
from fedvit.model.train import PhaseClock, make_optimizer, train_step

FAST = {"model-name": "test_vit", "img-size": 16, "patch-size": 4, "weights-path": ""}
NUM_CLASSES = 10
# Run-config keys that do not change the built model (what it is trained or sent with).
NOT_MODEL_KEYS = {
    "num-server-rounds", "fraction-train", "fraction-evaluate", "evaluate-in-train",
    "min-nodes", "local-epochs", "batch-size", "eval-batch-size", "learning-rate",
    "precision", "device", "compile", "codec-down", "codec-up", "dataset", "partitioner",
    "dirichlet-alpha", "val-fraction", "link-down-mbps", "link-up-mbps", "link-latency-ms",
    "link-profile", "link-emulate", "outputs-dir", "run-name", "resume-from", "node-wait-s",
    "round-timeout-s", "deploy-pickup-s", "deploy-startup-s", "deploy-return-s", "pack-tensors",
}
HEAVY = ("datasets", "flwr_datasets", "sklearn", "torchvision", "timm", "peft",
         "transformers", "torch._dynamo")


def _cfg(**overrides) -> AppConfig:
    return AppConfig.from_run_config({**FAST, **{k.replace("_", "-"): v
                                                 for k, v in overrides.items()}})


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().numpy().tobytes()


def _step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[bytes, dict]:
    model.train()
    torch.manual_seed(0)  # the same dropout masks, if any
    loss = train_step(model, make_optimizer(model, 0.01), x, y, PhaseClock(cuda=False), False)
    return _bits(loss), {k: _bits(v) for k, v in exchanged_state(model).items()}


@pytest.mark.parametrize("overrides", [{}, {"strategy": "fedavg"},
                                       {"lora-aggregation": "ffa", "lora-r": 4},
                                       {"lora-dropout": 0.1}])
def test_cached_model_is_the_fresh_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         overrides: dict) -> None:
    monkeypatch.setenv("FEDVIT_CACHE", str(tmp_path))
    cfg = _cfg(**overrides)
    first = cached_model(cfg, NUM_CLASSES)  # a miss: built with timm+peft, exported, checked
    assert not isinstance(first, ExportedModel)
    path = model_path(cfg, NUM_CLASSES)
    assert all(file.is_file() for file in (path, *mode_paths(path).values()))
    cached = cached_model(cfg, NUM_CLASSES)  # a hit
    assert isinstance(cached, ExportedModel)
    fresh = build_model(cfg, NUM_CLASSES)
    # Same names in the same order, same values bit for bit, same trainables.
    assert list(exchanged_state(cached)) == list(exchanged_state(fresh))
    assert list(cached.state_dict()) == list(fresh.state_dict())
    for key, value in fresh.state_dict().items():
        assert _bits(cached.state_dict()[key]) == _bits(value), key
    assert ([(n, p.requires_grad) for n, p in cached.named_parameters()]
            == [(n, p.requires_grad) for n, p in fresh.named_parameters()])
    assert backbone_fingerprint(cached) == backbone_fingerprint(fresh)
    assert input_stats(cached) == input_stats(fresh)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(7, 3, 16, 16, generator=gen), torch.randint(0, 10, (7,), generator=gen)
    for model in (cached, fresh):
        model.eval()
    with torch.no_grad():  # evaluation folds the adapters into the weights: also exported
        assert _bits(cached(x)) == _bits(fresh(x))
        assert _bits(cached(x[:1])) == _bits(fresh(x[:1]))  # any batch size
    with pytest.raises(RuntimeError, match="without gradients"):
        cached(x)  # eval mode with gradients was not exported
    # One training step: same loss, same exchanged tensors afterwards, bit for bit.
    assert _step(cached, x, y) == _step(fresh, x, y)


def test_cached_model_refuses_another_image_size(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDVIT_CACHE", str(tmp_path))
    cfg = _cfg()
    cached_model(cfg, NUM_CLASSES)
    model = ExportedModel(model_path(cfg, NUM_CLASSES))
    model(torch.zeros(3, 3, 16, 16))  # any batch size
    with pytest.raises(AssertionError, match="Guard failed"):
        model(torch.zeros(1, 3, 32, 32))  # timm would resample; the export must not guess


def test_loading_a_program_leaves_the_garbage_collector_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDVIT_CACHE", str(tmp_path))
    cfg = _cfg()
    cached_model(cfg, NUM_CLASSES)
    path = model_path(cfg, NUM_CLASSES)
    paused, load = [], torch.export.load
    monkeypatch.setattr(torch.export, "load",
                        lambda f: paused.append(not gc.isenabled()) or load(f))
    assert gc.isenabled()
    ExportedModel(path).train()
    assert paused == [True] and gc.isenabled()  # paused during the load only
    gc.disable()
    try:
        ExportedModel(path).eval()
        assert not gc.isenabled()  # a caller's pause stays
    finally:
        gc.enable()
    mode_paths(path)["eval"].write_bytes(b"not a program")
    with pytest.raises(zipfile.BadZipFile):  # torch.export.load's last try: a zip
        ExportedModel(path).eval()
    assert gc.isenabled()  # also after a failed load


def test_model_cache_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDVIT_CACHE", str(tmp_path))
    known = {f.name.replace("_", "-") for f in dataclasses.fields(AppConfig)}
    assert set(MODEL_KEYS) | NOT_MODEL_KEYS == known  # every key is classified
    base = model_path(_cfg(), NUM_CLASSES)
    assert base.parent == tmp_path / "models"
    changed = [model_path(_cfg(), 100), model_path(_cfg(strategy="fedavg"), NUM_CLASSES),
               model_path(_cfg(img_size=32), NUM_CLASSES),
               model_path(_cfg(patch_size=8), NUM_CLASSES),
               model_path(_cfg(seed=1), NUM_CLASSES),
               model_path(_cfg(lora_r=4), NUM_CLASSES),
               model_path(_cfg(lora_alpha=8.0), NUM_CLASSES),
               model_path(_cfg(lora_dropout=0.1), NUM_CLASSES),
               model_path(_cfg(lora_target_modules="qkv,proj"), NUM_CLASSES),
               model_path(_cfg(lora_aggregation="ffa"), NUM_CLASSES),
               model_path(_cfg(model_name="test_vit2"), NUM_CLASSES)]
    assert len({base, *changed}) == len(changed) + 1
    for key in NOT_MODEL_KEYS - {"dataset", "resume-from", "outputs-dir", "run-name"}:
        field = key.replace("-", "_")
        value = getattr(_cfg(), field)
        if isinstance(value, str):
            continue
        other = (not value) if isinstance(value, bool) else (
            value + 1 if isinstance(value, int) else value / 2)
        assert model_path(_cfg(**{field: other}), NUM_CLASSES) == base, key
    # A weights file: its identity is in the key; a changed file is another model.
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    before = model_path(_cfg(weights_path=str(weights)), NUM_CLASSES)
    weights.write_bytes(b"xy")
    assert model_path(_cfg(weights_path=str(weights)), NUM_CLASSES) not in (before, None)
    # The public backbone is not built yet in this cache: nothing to key on, no caching.
    assert model_path(_cfg(weights_path="public-pretrain"), NUM_CLASSES) is None
    assert model_path(_cfg(pretrained=True), NUM_CLASSES) is None  # hub weights: never
    key = model_key(_cfg(), NUM_CLASSES)
    assert set(key["libraries"]) == {"torch", "timm", "peft"} and key["code"]


def test_a_damaged_artefact_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDVIT_CACHE", str(tmp_path))
    cfg = _cfg()
    path = model_path(cfg, NUM_CLASSES)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a model")
    model = cached_model(cfg, NUM_CLASSES)
    assert not isinstance(model, ExportedModel)
    assert isinstance(ExportedModel(path), ExportedModel)


def test_a_fresh_client_process_imports_only_what_it_trains_with(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the partition and the model cached, loading ``client_app.app`` and building
    the task imports none of the heavy libraries; the first step then imports only
    ``torch._dynamo`` (``torch.export.load`` of the training program and torch's own
    optimizer both import it)."""
    monkeypatch.setenv("FEDVIT_CACHE", str(tmp_path))
    from client_app.task import local_task
    from fedvit.config.rules import timm_vit_names

    timm_vit_names.cache_clear()
    timm_vit_names()  # this process's names were read before: write them to this cache
    run_config = {**FAST, "num-server-rounds": 1}
    local_task(AppConfig.from_run_config(run_config), 0, 2)  # fills the other caches
    code = f"""
import sys
import client_app.app
from client_app.task import local_task
from fedvit.config.appconfig import AppConfig
from fedvit.model.cache import ExportedModel
from fedvit.model.train import PhaseClock, make_optimizer, train_step
heavy = {HEAVY!r}
task = local_task(AppConfig.from_run_config({run_config!r}), 0, 2)
print(isinstance(task.model, ExportedModel), [m for m in heavy if m in sys.modules])
x, y = next(iter(task.train))
train_step(task.model.train(), make_optimizer(task.model, 0.01), x, y, PhaseClock(False), False)
print([m for m in heavy if m in sys.modules])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "FEDVIT_CACHE": str(tmp_path)}, check=True)
    assert out.stdout.splitlines() == ["True []", "['torch._dynamo']"]
