"""The run config, read once into one typed, validated object.

Every default lives in ``pyproject.toml`` (``[tool.flwr.app.config]``); this module owns
every validation message. Nothing else reads ``context.run_config`` directly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from fedvit.files import write_text

APP_ROOT = Path(__file__).resolve().parents[1]
PUBLIC_PRETRAIN = "public-pretrain"
EMBEDDED_DATASET = "digits"
STRATEGIES = ("fedavg", "fedlora")
PARTITIONERS = ("iid", "dirichlet")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
LINK_PROFILES = ("uniform", "heterogeneous")
LORA_AGGREGATIONS = ("naive", "ffa")
FITTING_WEIGHTS = ("must be '', 'public-pretrain' or a weights file of the same architecture "
                   "('model-name'; position and patch embeddings are resampled)")
CHECKPOINT_STATE, CHECKPOINT_TENSORS = "checkpoint.json", "checkpoint.safetensors"
CONFIG_HISTORY = "configs.json"  # every accepted config of a run folder, with its start round
# Keys a resumed run may change: none of them changes what is exchanged, or how it is
# trained or aggregated. Every other key must keep the checkpoint's value.
RESUMABLE_KEYS = frozenset({
    "num-server-rounds", "outputs-dir", "run-name", "resume-from", "node-wait-s",
    "round-timeout-s", "device", "eval-batch-size", "fraction-evaluate", "evaluate-in-train",
    "link-down-mbps", "link-up-mbps", "link-latency-ms", "link-profile", "link-emulate",
    "deploy-pickup-s", "deploy-startup-s", "deploy-return-s",
})
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Every path-valued key, and what it may be. Relative paths are refused: under `flwr run`
# the app runs from its install folder (.flwr/apps/<bundle>/, or the SuperLink's app folder
# in a deployment), in-process from the project, so a relative path would mean two things.
PATH_KEYS = {
    "weights-path": f"'', '{PUBLIC_PRETRAIN}' or an absolute path to a .safetensors/.pth file",
    "dataset": f"'{EMBEDDED_DATASET}', a hub id 'owner/name' or an absolute path to a "
               "local dataset folder",
    "outputs-dir": "an absolute folder path",
    "resume-from": "'' or the absolute path of an earlier run's folder",
}


def _field(key: str) -> str:
    return key.replace("-", "_")


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
    ("model-name", lambda x: _is_timm_vit(x),
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
    ("dataset", lambda x: _is_dataset(x),
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


class ConfigError(ValueError):
    """A run-config value that is not allowed; the message names key, value and rule."""


@lru_cache(maxsize=1)
def pyproject_defaults() -> dict[str, Any]:
    """The ``[tool.flwr.app.config]`` table of the app's pyproject.toml."""
    with open(APP_ROOT / "pyproject.toml", "rb") as f:
        return dict(tomllib.load(f)["tool"]["flwr"]["app"]["config"])


@dataclass(frozen=True)
class AppConfig:
    """Every knob of the app, one field per ``[tool.flwr.app.config]`` key."""

    strategy: str
    num_server_rounds: int
    fraction_train: float
    fraction_evaluate: float
    evaluate_in_train: bool
    min_nodes: int
    local_epochs: int
    batch_size: int
    eval_batch_size: int
    learning_rate: float
    model_name: str
    img_size: int
    patch_size: int
    pretrained: bool
    weights_path: str
    lora_r: int
    lora_alpha: float
    lora_dropout: float
    lora_target_modules: str
    lora_aggregation: str
    codec_down: str
    codec_up: str
    dataset: str
    partitioner: str
    dirichlet_alpha: float
    val_fraction: float
    seed: int
    precision: str
    device: str
    link_down_mbps: float
    link_up_mbps: float
    link_latency_ms: float
    link_profile: str
    link_emulate: bool
    deploy_pickup_s: float
    deploy_startup_s: float
    deploy_return_s: float
    outputs_dir: str
    run_name: str
    resume_from: str
    node_wait_s: float
    round_timeout_s: float

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> AppConfig:
        """Validate a run config (missing keys fall back to pyproject.toml defaults).

        ``run_simulation`` hands apps an empty run config, hence the fallback.
        Raises ``ConfigError`` listing every bad key with its value and what is allowed.
        Validated once per distinct run config and process (clients call this per message).
        """
        return _validated(cls, tuple(sorted(dict(run_config).items())))

    @classmethod
    def _validate(cls, run_config: Mapping[str, Any]) -> AppConfig:
        merged = {**pyproject_defaults(), **dict(run_config)}
        known = {f.name.replace("_", "-") for f in dataclasses.fields(cls)}
        errors = [
            f"unknown run-config key '{key}' (known keys: {', '.join(sorted(known))})"
            for key in merged
            if key not in known
        ]
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            key = field.name.replace("_", "-")
            try:
                values[field.name] = _coerce(key, merged.get(key), field.type)
            except ConfigError as err:
                errors.append(str(err))
        errors += cls._rule_errors(values)
        if errors:
            raise ConfigError("invalid run config:\n  - " + "\n  - ".join(errors))
        return cls(**values)

    @staticmethod
    def _rule_errors(v: dict[str, Any]) -> list[str]:
        """Rule violations among the values that have the right type (a wrongly typed one
        is already reported, and the rules that need it are skipped)."""
        relative = {key: allowed for key, allowed in PATH_KEYS.items()
                    if isinstance(v.get(_field(key)), str)
                    and is_relative_path(key, v[_field(key)])}
        errors = [
            f"'{key}' = {_show(v[_field(key)])} is not allowed: a relative path is taken from "
            "another folder under `flwr run` (the app's install folder) than in-process; "
            f"must be {allowed}: pass an absolute path or ~/..."
            for key, allowed in relative.items()
        ]
        errors += [
            f"'{key}' = {_show(v[_field(key)])} is not allowed: must be {rule}"
            for key, ok, rule in RULES
            if _field(key) in v and key not in relative and not ok(v[_field(key)])
        ]

        def have(*keys: str) -> bool:
            return all(_field(k) in v for k in keys)

        if have("img-size", "patch-size") and v["patch_size"] > 0 and v["img_size"] % v[
            "patch_size"
        ]:
            errors.append(
                f"'img-size' = {v['img_size']} is not allowed with 'patch-size' = "
                f"{v['patch_size']}: must be a multiple of the patch size"
            )
        wp = v.get("weights_path")
        if (wp and wp != PUBLIC_PRETRAIN and "weights-path" not in relative
                and not resolve_path(wp).is_file()):
            errors.append(
                f"'weights-path' = {_show(wp)} is not allowed: no such file "
                f"({resolve_path(wp)}); must be '', '{PUBLIC_PRETRAIN}', or an existing "
                ".safetensors/.pth file"
            )
        if wp == PUBLIC_PRETRAIN and have("dataset") and v["dataset"] != EMBEDDED_DATASET:
            errors.append(
                f"'weights-path' = '{PUBLIC_PRETRAIN}' is not allowed with 'dataset' = "
                f"{_show(v['dataset'])}: the public pretraining split exists only for "
                f"'{EMBEDDED_DATASET}'; use 'pretrained' = true or a weights file"
            )
        if wp and v.get("pretrained"):
            errors.append(
                f"'pretrained' = true is not allowed with 'weights-path' = {_show(wp)}: "
                "choose hub weights or a weights file, not both"
            )
        if v.get("evaluate_in_train") and v.get("fraction_evaluate", 0) > 0:
            errors.append(
                f"'evaluate-in-train' = true is not allowed with 'fraction-evaluate' = "
                f"{v['fraction_evaluate']}: clients then evaluate inside train rounds and "
                "no evaluation round is sent; set 'fraction-evaluate' = 0"
            )
        if v.get("device") == "cuda" and not _cuda_available():
            errors.append("'device' = 'cuda' is not allowed: no CUDA device is available")
        return errors

    @property
    def use_cuda(self) -> bool:
        """Whether training runs on the GPU."""
        return self.device == "cuda" or (self.device == "auto" and _cuda_available())

    @property
    def use_bf16(self) -> bool:
        """bf16 autocast: asked for, or ``auto`` on a GPU."""
        return self.precision == "bf16" or (self.precision == "auto" and self.use_cuda)

    @property
    def torch_device(self) -> str:
        return "cuda" if self.use_cuda else "cpu"

    def to_dict(self) -> dict[str, Any]:
        """The config as run-config keys (for results files)."""
        return {k.replace("_", "-"): val for k, val in dataclasses.asdict(self).items()}


@lru_cache(maxsize=32)
def _validated(cls: type[AppConfig], items: tuple[tuple[str, Any], ...]) -> AppConfig:
    return cls._validate(dict(items))


def resume_errors(cfg: AppConfig) -> list[str]:
    """Rule violations of ``resume-from`` against the run folder it names (server side: a
    client never reads it). The folder must hold a checkpoint; every key outside
    ``RESUMABLE_KEYS`` must keep the value that run was started with (one error lists each
    changed key with both values); ``num-server-rounds`` must exceed the completed rounds.
    """
    if not cfg.resume_from:
        return []
    folder = resolve_path(cfg.resume_from)
    where = f"'resume-from' = {_show(cfg.resume_from)}"
    if not ((folder / CHECKPOINT_STATE).is_file() and (folder / CHECKPOINT_TENSORS).is_file()):
        return [f"{where} is not allowed: {folder} holds no checkpoint ({CHECKPOINT_STATE} "
                f"and {CHECKPOINT_TENSORS}); must be '' or the folder of an earlier run "
                "that completed at least one round"]
    earlier = run_config_of(folder)
    done = int(json.loads((folder / CHECKPOINT_STATE).read_text())["round"])
    errors = []
    now = cfg.to_dict()
    changed = [f"'{k}' = {_show(now[k])} (checkpoint: {_show(earlier[k])})"
               for k in now if k not in RESUMABLE_KEYS and k in earlier and earlier[k] != now[k]]
    if changed:
        errors.append(f"{where} is not allowed with a changed config: these keys change what "
                      "is exchanged or how it is trained or aggregated and must keep the "
                      f"checkpoint's values: {', '.join(changed)}")
    if cfg.num_server_rounds <= done:
        errors.append(f"'num-server-rounds' = {cfg.num_server_rounds} is not allowed with "
                      f"{where}: that run completed {done} rounds; must be > {done}")
    return errors


def resume_tensor_errors(cfg: AppConfig, expected: Mapping[str, tuple],
                         found: Mapping[str, tuple]) -> list[str]:
    """The checkpoint's tensors (name -> shape) against the ones this config exchanges."""
    if dict(expected) == dict(found):
        return []
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    shapes = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    return [f"'resume-from' = {_show(cfg.resume_from)} is not allowed: its checkpoint does "
            f"not hold the tensors this config exchanges ({len(missing)} missing "
            f"{missing[:3]}, {len(extra)} extra {extra[:3]}, {len(shapes)} of another shape "
            f"{shapes[:3]}); must be the folder of a run with the same model and strategy"]


def run_config_of(folder: Path) -> dict[str, Any]:
    """The latest accepted run config of a run folder (``configs.json``, else the older
    folders' ``config.json``)."""
    history = folder / CONFIG_HISTORY
    if history.is_file():
        return json.loads(history.read_text())[-1]["config"]
    return json.loads((folder / "config.json").read_text())


def validate_server(cfg: AppConfig) -> None:
    """The server's checks beyond ``from_run_config`` (it reads ``resume-from``'s folder,
    which clients never see). Raises ``ConfigError``."""
    raise_errors(resume_errors(cfg))


def model_errors(cfg: AppConfig, patch_size: tuple[int, int], img_size: tuple[int, int],
                 linear_names: Iterable[str]) -> list[str]:
    """Rule violations only the resolved model can show (the server checks them before it
    writes anything): its patch size (``patch-size`` = 0 means the model's own), the input
    size it was built for, and the LoRA target modules (its linear layers' short names).
    A size the model would crop (a strided convolution drops the remainder) or pad
    (``dynamic_img_pad``) is an error too: ``img-size`` must be a multiple of the patch."""
    errors = []
    ph, pw = patch_size
    patch = (f"'patch-size' = {cfg.patch_size}" if cfg.patch_size
             else f"'patch-size' = 0 (the model's own patch size, {ph})")
    if img_size != (cfg.img_size, cfg.img_size):
        errors.append(
            f"'img-size' = {cfg.img_size} is not allowed with 'model-name' = "
            f"{cfg.model_name!r}: the model is built for {img_size[0]}x{img_size[1]} inputs; "
            f"must be {img_size[0]}")
    elif cfg.img_size % ph or cfg.img_size % pw:
        lo = max(ph, cfg.img_size // ph * ph)
        errors.append(
            f"'img-size' = {cfg.img_size} is not allowed with {patch} of "
            f"{cfg.model_name!r}: the model would crop or pad the input; must be a "
            f"multiple of {ph}, e.g. {lo} or {lo + ph}")
    if cfg.strategy == "fedlora":
        names = set(linear_names)
        unknown = [t for t in target_modules(cfg.lora_target_modules) if t not in names]
        if unknown:
            errors.append(
                f"'lora-target-modules' = {cfg.lora_target_modules!r} is not allowed: "
                f"{unknown} are not linear layers of {cfg.model_name!r}; its linear layers "
                f"are {sorted(names)}")
    return errors


def raise_errors(errors: list[str]) -> None:
    """One ``ConfigError`` listing every error (none: nothing happens)."""
    if errors:
        raise ConfigError("invalid run config:\n  - " + "\n  - ".join(errors))


def target_modules(spec: str) -> list[str]:
    """``'qkv, proj'`` -> ``['qkv', 'proj']``."""
    return [name.strip() for name in spec.split(",") if name.strip()]


def cache_dir() -> Path:
    """Where built artefacts are kept: ``$FEDVIT_CACHE``, default ``~/.cache/fedvit``."""
    return Path(os.environ.get("FEDVIT_CACHE", Path.home() / ".cache" / "fedvit"))


def resolve_path(path: str) -> Path:
    """A user path with ``~`` expanded. Validation refuses relative paths
    (``is_relative_path``), so every path that reaches here is absolute; a hub id
    ``owner/name`` is returned as a relative path, which names no local folder."""
    return Path(os.path.expanduser(path))


def is_relative_path(key: str, value: str) -> bool:
    """Whether ``value`` of the path-valued ``key`` is a relative path (refused). Special
    values are not paths: ``''``, ``public-pretrain``, ``digits``, a hub id ``owner/name``."""
    if key not in PATH_KEYS or value == "":
        return False
    if (key, value) in (("weights-path", PUBLIC_PRETRAIN), ("dataset", EMBEDDED_DATASET)):
        return False
    if key == "dataset" and (_HUB_ID.match(value) and not value.startswith(".")
                             or not value.startswith(".") and "/" not in value):
        return False  # a hub id, or a name (refused by the dataset rule if unknown)
    return not resolve_path(value).is_absolute()


def _coerce(key: str, value: Any, type_name: Any) -> Any:
    name = type_name if isinstance(type_name, str) else type_name.__name__
    if value is None:
        raise ConfigError(f"'{key}' is missing (no value and no default in pyproject.toml)")
    if name == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif name == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif name == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif name == "str":
        if isinstance(value, str):
            return value
    raise ConfigError(f"'{key}' = {_show(value)} is not allowed: must be of type {name}")


def _show(value: Any) -> str:
    """A value as the run config spells it: 'text', true/false, numbers as they are."""
    if isinstance(value, str):
        return repr(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def _is_timm_vit(name: str) -> bool:
    return name in timm_vit_names()


@lru_cache(maxsize=1)
def timm_vit_names() -> frozenset[str]:
    """``timm.list_models(module="vision_transformer")``, read from a file cached per timm
    install (``$FEDVIT_CACHE/timm``): importing timm costs about 1.5 s a process (it
    imports torchvision and, through it, ``torch._dynamo``), and every ClientApp process
    validates its config. The key is timm's version and its ViT module's size and time."""
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
    try:  # a cache that cannot be written only costs the next process the import
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(names))
    except OSError:
        pass
    return frozenset(names)


def _is_dataset(name: str) -> bool:
    if name == EMBEDDED_DATASET:
        return True
    if resolve_path(name).is_absolute():
        return resolve_path(name).is_dir()
    return bool(_HUB_ID.match(name)) and not name.startswith((".", "/", "~"))


def _is_codec(spec: str) -> bool:
    from fedvit.codecs import CodecSpec

    try:
        CodecSpec.parse(spec)
    except ValueError:
        return False
    return True


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
