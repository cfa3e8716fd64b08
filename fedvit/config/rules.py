"""What each run-config key may be: the single-key rules and the rules across keys.

Each rule yields a message naming the key, its value and what is allowed; ``AppConfig``
(``fedvit.config.appconfig``) collects them into one ``ConfigError``. The rules that need a built
model are ``fedvit.model.backbone.model_errors``; those that read a run folder are
``fedvit.config.resume``'s.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from fedvit.codecs.spec import CodecSpec
from fedvit.config.paths import (
    EMBEDDED_DATASET,
    PATH_KEYS,
    PUBLIC_PRETRAIN,
    cache_dir,
    is_dataset,
    is_relative_path,
    resolve_path,
)
from fedvit.files import write_text

STRATEGIES = ("fedavg", "fedlora")
PARTITIONERS = ("iid", "dirichlet")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
LINK_PROFILES = ("uniform", "heterogeneous")
LORA_AGGREGATIONS = ("naive", "ffa")
FITTING_WEIGHTS = ("must be '', 'public-pretrain' or a weights file of the same architecture "
                   "('model-name'; position and patch embeddings are resampled)")


# (key, predicate on its typed value, what is allowed): one rule per single-key check.
RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("strategy", lambda x: x in STRATEGIES, f"one of {STRATEGIES}"),
    ("num-server-rounds", lambda x: x >= 1, "an integer >= 1"),
    ("fraction-train", lambda x: 0 < x <= 1, "a number in (0, 1]"),
    ("fraction-evaluate", lambda x: 0 <= x <= 1, "a number in [0, 1]"),
    ("min-nodes", lambda x: x >= 1, "an integer >= 1"),
    ("local-epochs", lambda x: x >= 1, "an integer >= 1"),
    ("batch-size", lambda x: x >= 1, "an integer >= 1"),
    ("eval-batch-size", lambda x: x >= 1, "an integer >= 1"),
    ("learning-rate", lambda x: x > 0, "a number > 0"),
    ("model-name", lambda x: x in timm_vit_names(),
     "a timm Vision Transformer name (timm.list_models(module='vision_transformer'))"),
    ("img-size", lambda x: x >= 1, "an integer >= 1"),
    ("patch-size", lambda x: x >= 0, "0 (the model's own) or an integer >= 1"),
    ("lora-r", lambda x: x >= 1, "an integer >= 1"),
    ("lora-alpha", lambda x: x > 0, "a number > 0"),
    ("lora-dropout", lambda x: 0 <= x < 1, "a number in [0, 1)"),
    ("lora-target-modules", lambda x: bool(target_modules(x)),
     "a comma-separated list of module names, e.g. 'qkv' or 'qkv,proj'"),
    ("lora-aggregation", lambda x: x in LORA_AGGREGATIONS, f"one of {LORA_AGGREGATIONS}"),
    ("codec-down", lambda x: _is_codec(x) and not x.startswith("topk"),
     "a codec: none, fp16, bf16, int8[:block], int4[:block] (topk is for updates only)"),
    ("codec-up", lambda x: _is_codec(x),
     "a codec: none, fp16, bf16, int8[:block], int4[:block], topk[:fraction]"),
    ("dataset", lambda x: is_dataset(x),
     f"'{EMBEDDED_DATASET}', an existing local dataset folder, or a hub id 'owner/name'"),
    ("partitioner", lambda x: x in PARTITIONERS, f"one of {PARTITIONERS}"),
    ("dirichlet-alpha", lambda x: x > 0, "a number > 0"),
    ("val-fraction", lambda x: 0 < x < 1, "a number in (0, 1)"),
    ("seed", lambda x: x >= 0, "an integer >= 0"),
    ("precision", lambda x: x in PRECISIONS, f"one of {PRECISIONS}"),
    ("device", lambda x: x in DEVICES, f"one of {DEVICES}"),
    ("link-down-mbps", lambda x: x > 0, "a number > 0 (Mbit/s)"),
    ("link-up-mbps", lambda x: x > 0, "a number > 0 (Mbit/s)"),
    ("link-latency-ms", lambda x: x >= 0, "a number >= 0 (ms)"),
    ("link-profile", lambda x: x in LINK_PROFILES, f"one of {LINK_PROFILES}"),
    ("deploy-pickup-s", lambda x: x >= 0, "a number of seconds >= 0"),
    ("deploy-startup-s", lambda x: x >= 0, "a number of seconds >= 0"),
    ("deploy-return-s", lambda x: x >= 0, "a number of seconds >= 0"),
    ("outputs-dir", lambda x: bool(x.strip()), "a non-empty folder path"),
    ("run-name", lambda x: "/" not in x and x not in (".", ".."),
     "'' or a folder name without '/'"),
    ("node-wait-s", lambda x: x > 0, "a number of seconds > 0"),
    ("round-timeout-s", lambda x: x > 0, "a number of seconds > 0"),
)


def rule_errors(v: dict[str, Any]) -> list[str]:
    """Rule violations among values of the right type.

    Args:
        v: typed values by ``AppConfig`` field name; a wrongly typed one is left out
            (already reported), and the rules that need it are skipped.

    Returns:
        One message per violation: relative paths, then the single-key ``RULES`` in
        their order, then the rules across keys.
    """
    relative = {key: allowed for key, allowed in PATH_KEYS.items()
                if isinstance(v.get(_field(key)), str)
                and is_relative_path(key, v[_field(key)])}
    errors = [
        f"'{key}' = {show(v[_field(key)])} is not allowed: a relative path is taken from "
        "another folder under `flwr run` (the app's install folder) than in-process; "
        f"must be {allowed}: pass an absolute path or ~/..."
        for key, allowed in relative.items()
    ]
    errors += [
        f"'{key}' = {show(v[_field(key)])} is not allowed: must be {rule}"
        for key, ok, rule in RULES
        if _field(key) in v and key not in relative and not ok(v[_field(key)])
    ]
    return errors + _cross_key_errors(v, weights_relative="weights-path" in relative)


def _field(key: str) -> str:
    return key.replace("-", "_")  # a run-config key's AppConfig field


def _cross_key_errors(v: dict[str, Any], weights_relative: bool) -> list[str]:
    errors = []
    if ("img_size" in v and "patch_size" in v and v["patch_size"] > 0
            and v["img_size"] % v["patch_size"]):
        errors.append(
            f"'img-size' = {v['img_size']} is not allowed with 'patch-size' = "
            f"{v['patch_size']}: must be a multiple of the patch size"
        )
    wp = v.get("weights_path")
    if (wp and wp != PUBLIC_PRETRAIN and not weights_relative
            and not (resolve_path(wp).is_file() and os.access(resolve_path(wp), os.R_OK))):
        errors.append(
            f"'weights-path' = {show(wp)} is not allowed: no such file this process can "
            f"read ({resolve_path(wp)}); must be '', '{PUBLIC_PRETRAIN}', or an existing "
            ".safetensors/.pth file"
        )
    if wp == PUBLIC_PRETRAIN and "dataset" in v and v["dataset"] != EMBEDDED_DATASET:
        errors.append(
            f"'weights-path' = '{PUBLIC_PRETRAIN}' is not allowed with 'dataset' = "
            f"{show(v['dataset'])}: the public pretraining split exists only for "
            f"'{EMBEDDED_DATASET}'; use 'pretrained' = true or a weights file"
        )
    if wp and v.get("pretrained"):
        errors.append(
            f"'pretrained' = true is not allowed with 'weights-path' = {show(wp)}: "
            "choose hub weights or a weights file, not both"
        )
    if v.get("evaluate_in_train") and v.get("fraction_evaluate", 0) > 0:
        errors.append(
            f"'evaluate-in-train' = true is not allowed with 'fraction-evaluate' = "
            f"{v['fraction_evaluate']}: clients then evaluate inside train rounds and "
            "no evaluation round is sent; set 'fraction-evaluate' = 0"
        )
    if v.get("device") == "cuda" and not cuda_available():
        errors.append("'device' = 'cuda' is not allowed: no CUDA device is available")
    if v.get("compile") and "device" in v:
        cuda = v["device"] == "cuda" or (v["device"] == "auto" and cuda_available())
        missing = compile_missing(cuda)
        if missing:
            errors.append(f"'compile' = true is not allowed on this machine: {missing}; "
                          "must be false here")
    return errors


def compile_missing(cuda: bool) -> str:
    """What ``torch.compile`` lacks here to train a model, or ``''``. Checked only when
    asked for (imports ``torch._dynamo``, about 1 s).

    Args:
        cuda: the model trains on a GPU (inductor generates triton kernels, which triton
            builds a launcher for with a C compiler) rather than the CPU (C++ kernels).

    Returns:
        A reason naming what is missing: dynamo's support for this Python, triton, or the
        compiler (``CXX``/``CC`` or one on ``PATH``); ``''`` when nothing is.
    """
    import importlib.util
    import os
    import shutil

    from torch._dynamo import is_dynamo_supported

    if not is_dynamo_supported():
        return "this Python/platform is not supported by torch.compile"
    if cuda and importlib.util.find_spec("triton") is None:
        return "torch.compile on CUDA needs triton, which is not installed"
    var, names = ("CC", ("cc", "gcc", "clang")) if cuda else ("CXX", ("c++", "g++", "clang++"))
    if not any(shutil.which(n) for n in (os.environ.get(var, ""), *names) if n):
        return f"torch.compile needs a {'C' if cuda else 'C++'} compiler ({var} or one of " \
               f"{', '.join(names)} on PATH)"
    return ""


def show(value: Any) -> str:
    """A value as the run config spells it, for messages.

    Args:
        value: a run-config value.

    Returns:
        ``'text'`` (quoted), ``true``/``false``, numbers as ``str`` gives them.
    """
    if isinstance(value, str):
        return repr(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def target_modules(spec: str) -> list[str]:
    """The LoRA target modules of ``lora-target-modules``.

    Args:
        spec: e.g. ``'qkv, proj'``.

    Returns:
        The names, stripped, empty ones dropped: ``['qkv', 'proj']``.
    """
    return [name.strip() for name in spec.split(",") if name.strip()]


def cuda_available() -> bool:
    """Whether a GPU is there (imports torch).

    Returns:
        ``torch.cuda.is_available()``.
    """
    import torch

    return torch.cuda.is_available()


@lru_cache(maxsize=1)
def timm_vit_names() -> frozenset[str]:
    """``timm.list_models(module="vision_transformer")``, read from a file cached per timm
    install (``$FEDVIT_CACHE/timm``).

    Importing timm costs about 1.5 s a process (it imports torchvision and, through it,
    ``torch._dynamo``), and every ClientApp process validates its config. The key is timm's
    version and its ViT module's size and time. A cache that cannot be written only costs
    the next process the import.

    Returns:
        The model names.

    Raises:
        ImportError: timm is not installed.
    """
    from importlib import metadata, util

    spec = util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        import timm  # not installed: fail as the import does

        return frozenset(timm.list_models(module="vision_transformer"))
    source = Path(spec.submodule_search_locations[0]) / "models" / "vision_transformer.py"
    st = source.stat()
    key = json.dumps([metadata.version("timm"), str(source), st.st_size, st.st_mtime_ns])
    path = cache_dir() / "timm" / f"vit-names-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    try:
        return frozenset(json.loads(path.read_text()))
    except (OSError, ValueError):
        pass
    import timm

    names = sorted(timm.list_models(module="vision_transformer"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(names))
    except OSError:
        pass
    return frozenset(names)


def _is_codec(spec: str) -> bool:
    try:
        CodecSpec.parse(spec)
    except ValueError:
        return False
    return True
