"""The built model, cached on disk as a torch-only artefact: a ClientApp process that
finds it loads it with torch alone, without importing timm, peft (and, through them,
torchvision, ``torch._dynamo`` and transformers: about 3 s of every fresh process).

In a Flower 1.41 deployment every message runs in a fresh ClientApp process, which used
to rebuild the model with timm and peft each time. timm and peft stay the source of
truth: on a cache miss the model is built with them (``fedvit.model.build_model``) and
traced (``fedvit.tracing``); the artefact holds the ``TracedModel``.

A new artefact is kept only after it was checked against a second, fresh timm+peft build:
same parameter and buffer names in the same order, the same values bit for bit, the same
trainable set and exchanged tensors, the same backbone fingerprint and input statistics,
the same outputs in training and in evaluation, and the same result of one training step
(loss and every exchanged tensor, bit for bit). The cache key covers everything the model
depends on (``model_key``); hub weights (``pretrained``) are never cached, as they can
change under the same name. The artefact's code is executed when loaded, like any pickle:
keep ``$FEDVIT_CACHE`` writable only by its owner.

``fedvit.model`` imports timm and peft, so it is imported only where a model is built
(a cache miss).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from fedvit.config import AppConfig
from fedvit.files import atomic_path
from fedvit.paths import PUBLIC_PRETRAIN, cache_dir, resolve_path
from fedvit.pretrain import backbone_path
from fedvit.tensors import backbone_fingerprint, exchanged_state, input_stats, is_lora
from fedvit.tracing import MODES, TracedModel, safe_globals, trace
from fedvit.train import PhaseClock, make_optimizer, train_step

TRACED_FORMAT = 2  # bump when what an artefact holds or how it is traced changes
# Run-config keys the built model depends on (tests/e2e/test_coldstart.py classifies the rest).
MODEL_KEYS = ("strategy", "model-name", "img-size", "patch-size", "pretrained", "seed",
              "weights-path", "lora-r", "lora-alpha", "lora-dropout", "lora-target-modules",
              "lora-aggregation")
# Code whose change must invalidate artefacts: how the model is built, traced, answered.
SOURCES = ("model.py", "backbone.py", "adapters.py", "tensors.py", "tracing.py", "traced.py")

log = logging.getLogger(__name__)


def cached_model(cfg: AppConfig, num_classes: int) -> nn.Module:
    """The model ``fedvit.model.build_model`` builds, loaded from the traced cache when it
    is there; otherwise built with timm+peft, traced, checked and cached (the built model
    is returned then). A damaged artefact is rebuilt; a model that cannot be traced or
    checked is only not cached (both logged as warnings).

    Args:
        cfg: the run config.
        num_classes: the classifier's outputs.

    Returns:
        A ``TracedModel`` (a hit) or the timm/peft build (a miss).

    Raises:
        ConfigError: as ``build_model`` raises.
    """
    path = model_path(cfg, num_classes)
    if path is not None and path.is_file():
        try:
            return load(path)
        except Exception as err:  # a damaged or foreign file: rebuild it
            log.warning("fedvit: traced model %s unreadable (%s); rebuilding", path, err)
    from fedvit.model import build_model

    model = build_model(cfg, num_classes)
    path = model_path(cfg, num_classes)  # the backbone may have been built just now
    if path is not None:
        try:
            save_checked(model, cfg, num_classes, path)
        except Exception as err:  # not traceable: fine, just not cached
            log.warning("fedvit: model not cached (%s: %s)", type(err).__name__, err)
    return model


def model_key(cfg: AppConfig, num_classes: int) -> dict | None:
    """Everything the built model depends on.

    Args:
        cfg: the run config (``MODEL_KEYS`` are read).
        num_classes: the classifier's outputs.

    Returns:
        A JSON-able dict (format, classes, model keys, the weights file's path, size and
        mtime, torch/timm/peft versions, a digest of ``SOURCES``), or None when the model
        must not be cached (hub weights, or a weights file that is not there yet).
    """
    if cfg.pretrained:
        return None
    values = dataclasses.asdict(cfg)
    key: dict = {"format": TRACED_FORMAT, "num-classes": num_classes,
                 "config": {k: values[k.replace("-", "_")] for k in MODEL_KEYS}}
    if cfg.weights_path:
        weights = (backbone_path(cfg) if cfg.weights_path == PUBLIC_PRETRAIN
                   else resolve_path(cfg.weights_path))
        if not weights.is_file():
            return None
        st = weights.stat()
        key["weights"] = [str(weights), st.st_size, st.st_mtime_ns]
    key["libraries"] = {"torch": torch.__version__,
                        **{name: metadata.version(name) for name in ("timm", "peft")}}
    here = Path(__file__).parent
    key["code"] = hashlib.sha256(b"".join((here / f).read_bytes() for f in SOURCES)
                                 ).hexdigest()
    return key


def model_path(cfg: AppConfig, num_classes: int) -> Path | None:
    """The artefact's file.

    Args:
        cfg: the run config.
        num_classes: the classifier's outputs.

    Returns:
        ``$FEDVIT_CACHE/models/<model-name>-<key digest>.pt``, or None (not cacheable,
        see ``model_key``).
    """
    key = model_key(cfg, num_classes)
    if key is None:
        return None
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "models" / f"{cfg.model_name}-{digest}.pt"


def load(path: Path) -> TracedModel:
    """A traced model from its file, with torch alone (the file may hold only ``torch.nn``
    modules and tensors, and its code may call only torch and Python built-ins).

    Args:
        path: an artefact ``save_checked`` wrote.

    Returns:
        The model, on the CPU, in training mode as it was saved.

    Raises:
        ValueError: another ``TRACED_FORMAT``.
        OSError, RuntimeError, pickle.UnpicklingError, KeyError: a missing, damaged or
            foreign file.
    """
    with torch.serialization.safe_globals(safe_globals()):
        saved = torch.load(path, weights_only=True)
    if saved.get("format") != TRACED_FORMAT:
        raise ValueError(f"format {saved.get('format')} is not {TRACED_FORMAT}")
    return TracedModel.from_artefact(saved)


def save_checked(model: nn.Module, cfg: AppConfig, num_classes: int, path: Path) -> None:
    """Trace ``model``, write it, load it back and keep the file only if the loaded model
    equals a second fresh build in everything (see the module's doc). The global random
    state is left as the build left it.

    Args:
        model: a fresh ``build_model(cfg, num_classes)`` (it is copied, not consumed).
        cfg: the run config it was built from.
        num_classes: the classifier's outputs.
        path: the artefact's file (written atomically; its folder is created).

    Raises:
        AssertionError: the traced model differs from the fresh build (no file is kept).
        ValueError, torch.fx.proxy.TraceError: the model cannot be traced.
    """
    from fedvit.model import build_model

    path.parent.mkdir(parents=True, exist_ok=True)
    # The global random state is left as the build left it.
    with torch.random.fork_rng(devices=[]), atomic_path(path) as tmp:
        traced = trace(copy.deepcopy(model), cfg.img_size)
        torch.save({"format": TRACED_FORMAT, **traced.to_artefact()}, tmp)
        check_same(load(tmp), build_model(cfg, num_classes), cfg)


def check_same(loaded: nn.Module, built: nn.Module, cfg: AppConfig) -> None:
    """Check that ``loaded`` and the fresh ``built`` model are the same model: names,
    order, values, trainables, exchanged tensors, fingerprint, input statistics, outputs
    in every mode on a seeded ``(5, 3, img-size, img-size)`` input, and one training step.
    Both models are left trained by that step.

    Args:
        loaded: the model loaded from the new artefact.
        built: a second, fresh timm+peft build.
        cfg: the run config (image size, seed, learning rate).

    Raises:
        AssertionError: naming the first difference.
    """
    mine, theirs = loaded.state_dict(), built.state_dict()
    _check(list(mine) == list(theirs), "state dict names or order differ")
    for k, v in theirs.items():
        _check(_bits_equal(mine[k], v), f"value of {k} differs")
    _check([(n, p.requires_grad) for n, p in loaded.named_parameters()]
           == [(n, p.requires_grad) for n, p in built.named_parameters()],
           "parameters or trainables differ")
    _check(list(exchanged_state(loaded)) == list(exchanged_state(built)),
           "exchanged tensors differ")
    _check(is_lora(loaded) == is_lora(built), "LoRA or not differs")
    _check(backbone_fingerprint(loaded) == backbone_fingerprint(built), "fingerprint differs")
    _check(input_stats(loaded) == input_stats(built), "input statistics differ")
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(5, 3, cfg.img_size, cfg.img_size, generator=gen)
    for training in (True, False):
        for grad in (True, False):
            loaded.train(training)
            built.train(training)
            outputs = []
            for model in (loaded, built):
                torch.manual_seed(cfg.seed)  # the same dropout masks, if any
                with torch.set_grad_enabled(grad):
                    outputs.append(model(x))
            _check(_bits_equal(*outputs), f"outputs differ ({MODES[(training, grad)]})")
    labels = torch.randint(0, 2, (5,), generator=gen)
    results = []
    for model in (loaded, built):
        model.train()
        torch.manual_seed(cfg.seed)
        loss = train_step(model, make_optimizer(model, cfg.learning_rate), x, labels,
                          PhaseClock(cuda=False), bf16=False)
        results.append((loss, exchanged_state(model)))
    _check(_bits_equal(results[0][0], results[1][0]), "first step's loss differs")
    for k, v in results[1][1].items():
        _check(_bits_equal(results[0][1][k], v), f"{k} after one step differs")


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a.detach().reshape(-1).view(torch.uint8),
                            b.detach().reshape(-1).view(torch.uint8)))


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(f"traced model differs from its timm+peft build: {what}")
