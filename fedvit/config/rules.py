"""What each run-config key may be; each message names the key, its value and what is allowed.
Rules needing a built model: ``fedvit.model.backbone.model_errors``; a run folder: ``.resume``."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from contextlib import suppress
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
from fedvit.files import atomic_path

STRATEGIES = ("fedavg", "fedlora")
FITTING_WEIGHTS = ("must be '', 'public-pretrain' or a weights file of the same architecture "
                   "('model-name'; position and patch embeddings are resampled)")
Rule = tuple[Callable[[Any], bool], str]  # (predicate on the typed value, what is allowed)


def _one_of(*choices: str) -> Rule:
    return (lambda x: x in choices), f"one of {choices}"


def _is_codec(spec: str) -> bool:
    try:
        return CodecSpec.parse(spec) is not None
    except ValueError:
        return False


_INT_1: Rule = (lambda x: x >= 1, "an integer >= 1")
_POSITIVE: Rule = (lambda x: x > 0, "a number > 0")
_CODECS = "a codec: none, fp16, bf16, int8[:block], int4[:block]"
# One rule per single-key check; checked in AppConfig's field order.
RULES: dict[str, Rule] = {
    "strategy": _one_of(*STRATEGIES),
    "fraction-train": (lambda x: 0 < x <= 1, "a number in (0, 1]"),
    "fraction-evaluate": (lambda x: 0 <= x <= 1, "a number in [0, 1]"),
    **dict.fromkeys(("num-server-rounds", "min-nodes", "local-epochs", "batch-size",
                     "eval-batch-size", "img-size", "lora-r"), _INT_1),
    **dict.fromkeys(("learning-rate", "lora-alpha", "dirichlet-alpha"), _POSITIVE),
    "model-name": (lambda x: x in timm_vit_names(), "a timm Vision Transformer name "
                   "(timm.list_models(module='vision_transformer'))"),
    "patch-size": (lambda x: x >= 0, "0 (the model's own) or an integer >= 1"),
    "lora-dropout": (lambda x: 0 <= x < 1, "a number in [0, 1)"),
    "lora-target-modules": (lambda x: bool(target_modules(x)),
                            "a comma-separated list of module names, e.g. 'qkv' or 'qkv,proj'"),
    "lora-aggregation": _one_of("naive", "ffa"),
    "codec-down": (lambda x: _is_codec(x) and not x.startswith("topk"),
                   f"{_CODECS} (topk is for updates only)"),
    "codec-up": (_is_codec, f"{_CODECS}, topk[:fraction]"),
    "dataset": (is_dataset, f"'{EMBEDDED_DATASET}', an existing local dataset folder, or a "
                "hub id 'owner/name'"),
    "partitioner": _one_of("iid", "dirichlet"),
    "val-fraction": (lambda x: 0 < x < 1, "a number in (0, 1)"),
    "seed": (lambda x: x >= 0, "an integer >= 0"),
    "precision": _one_of("auto", "fp32", "bf16"),
    "device": _one_of("auto", "cpu", "cuda"),
    "link-down-mbps": (lambda x: x > 0, "a number > 0 (Mbit/s)"),
    "link-up-mbps": (lambda x: x > 0, "a number > 0 (Mbit/s)"),
    "link-latency-ms": (lambda x: x >= 0, "a number >= 0 (ms)"),
    "link-profile": _one_of("uniform", "heterogeneous"),
    **dict.fromkeys(("deploy-pickup-s", "deploy-startup-s", "deploy-return-s"),
                    (lambda x: x >= 0, "a number of seconds >= 0")),
    "outputs-dir": (lambda x: bool(x.strip()), "a non-empty folder path"),
    "run-name": (lambda x: "/" not in x and x not in (".", ".."),
                 "'' or a folder name without '/'"),
    **dict.fromkeys(("node-wait-s", "round-timeout-s"),
                    (lambda x: x > 0, "a number of seconds > 0")),
}


def rule_errors(v: dict[str, Any]) -> list[str]:
    """One message per broken rule: relative paths, single-key ``RULES``, rules across keys.
    ``v``: typed values by ``AppConfig`` field name, less wrongly typed (already reported) ones."""
    keyed = {field.replace("_", "-"): value for field, value in v.items()}
    relative = [key for key in PATH_KEYS
                if isinstance(keyed.get(key), str) and is_relative_path(key, keyed[key])]
    errors = [f"'{key}' = {show(keyed[key])} is not allowed: a relative path is taken from "
              "another folder under `flwr run` (the app's install folder) than in-process; "
              f"must be {PATH_KEYS[key]}: pass an absolute path or ~/..." for key in relative]
    errors += [f"'{key}' = {show(value)} is not allowed: must be {RULES[key][1]}"
               for key, value in keyed.items()
               if key in RULES and key not in relative and not RULES[key][0](value)]
    if v.get("patch_size", 0) > 0 and "img_size" in v and v["img_size"] % v["patch_size"]:
        errors.append(f"'img-size' = {v['img_size']} is not allowed with 'patch-size' = "
                      f"{v['patch_size']}: must be a multiple of the patch size")
    wp = v.get("weights_path")
    if (wp and wp != PUBLIC_PRETRAIN and "weights-path" not in relative
            and not (resolve_path(wp).is_file() and os.access(resolve_path(wp), os.R_OK))):
        errors.append(f"'weights-path' = {show(wp)} is not allowed: no such file this process "
                      f"can read ({resolve_path(wp)}); must be '', '{PUBLIC_PRETRAIN}', or an "
                      "existing .safetensors/.pth file")
    if wp == PUBLIC_PRETRAIN and "dataset" in v and v["dataset"] != EMBEDDED_DATASET:
        errors.append(f"'weights-path' = '{PUBLIC_PRETRAIN}' is not allowed with 'dataset' = "
                      f"{show(v['dataset'])}: the public pretraining split exists only for "
                      f"'{EMBEDDED_DATASET}'; use 'pretrained' = true or a weights file")
    if wp and v.get("pretrained"):
        errors.append(f"'pretrained' = true is not allowed with 'weights-path' = {show(wp)}: "
                      "choose hub weights or a weights file, not both")
    if v.get("evaluate_in_train") and v.get("fraction_evaluate", 0) > 0:
        errors.append(f"'evaluate-in-train' = true is not allowed with 'fraction-evaluate' = "
                      f"{v['fraction_evaluate']}: clients then evaluate inside train rounds "
                      "and no evaluation round is sent; set 'fraction-evaluate' = 0")
    if v.get("device") == "cuda" and not cuda_available():
        errors.append("'device' = 'cuda' is not allowed: no CUDA device is available")
    if v.get("compile") and "device" in v and (missing := compile_missing(
            v["device"] == "cuda" or (v["device"] == "auto" and cuda_available()))):
        errors.append(f"'compile' = true is not allowed on this machine: {missing}; "
                      "must be false here")
    return errors


def compile_missing(cuda: bool) -> str:
    """What ``torch.compile`` lacks here, or ``''`` (imports ``torch._dynamo``, ~1 s). Inductor
    emits triton kernels on CUDA (their launcher needs a C compiler), C++ ones on the CPU."""
    import importlib.util
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
    """A value as the run config spells it: ``'text'``, ``true``/``false``, ``str(number)``."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return repr(value) if isinstance(value, str) else text


def target_modules(spec: str) -> list[str]:
    """``lora-target-modules`` as names: ``'qkv, proj'`` -> ``['qkv', 'proj']``."""
    return [name.strip() for name in spec.split(",") if name.strip()]


def cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


@lru_cache(maxsize=1)
def timm_vit_names() -> frozenset[str]:
    """``timm.list_models(module="vision_transformer")``, cached in ``$FEDVIT_CACHE/timm`` per
    timm version and ViT module file (importing timm: 1.5 s a process). ImportError: no timm."""
    from importlib import metadata, util
    path = None
    spec = util.find_spec("timm")  # None: not installed, and the import below fails as it does
    if spec is not None and spec.submodule_search_locations:
        source = Path(spec.submodule_search_locations[0]) / "models" / "vision_transformer.py"
        st = source.stat()
        key = json.dumps([metadata.version("timm"), str(source), st.st_size, st.st_mtime_ns])
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        path = cache_dir() / "timm" / f"vit-names-{digest}.json"
        with suppress(OSError, ValueError):
            return frozenset(json.loads(path.read_text()))
    import timm
    names = sorted(timm.list_models(module="vision_transformer"))
    if path is not None:
        with suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(names))
    return frozenset(names)
