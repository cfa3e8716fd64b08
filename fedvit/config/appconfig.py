"""The run config, read once into one typed, validated object (rules: ``.rules``, ``.paths``,
``.resume``). Every default lives in pyproject.toml; nothing else reads ``context.run_config``."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

from fedvit.codecs.spec import CodecSpec
from fedvit.config.paths import APP_ROOT
from fedvit.config.rules import cuda_available, rule_errors, show


class ConfigError(ValueError):
    """A run-config value that is not allowed; the message names key, value and rule."""


def raise_errors(errors: list[str]) -> None:
    """Raise one ``ConfigError``: ``invalid run config:`` and a ``  - <error>`` line each."""
    if errors:
        raise ConfigError("invalid run config:\n  - " + "\n  - ".join(errors))


@lru_cache(maxsize=1)
def pyproject_defaults() -> dict[str, Any]:
    """The ``[tool.flwr.app.config]`` table of the app's pyproject.toml (OSError: unreadable)."""
    with open(APP_ROOT / "pyproject.toml", "rb") as f:
        return dict(tomllib.load(f)["tool"]["flwr"]["app"]["config"])


@dataclass(frozen=True)
class AppConfig:
    """One field per run-config key (``-`` as ``_``); build it with ``from_run_config``."""

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
    pack_tensors: bool
    dataset: str
    partitioner: str
    dirichlet_alpha: float
    val_fraction: float
    seed: int
    precision: str
    device: str
    compile: bool
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
        """Validate a run config (ConfigError lists every unknown key, wrong type and broken
        rule); missing keys take pyproject.toml's defaults. Cached: clients call it per message."""
        return _validated(cls, tuple(sorted(dict(run_config).items())))

    @cached_property
    def down_codec(self) -> CodecSpec:
        return CodecSpec.parse(self.codec_down)

    @cached_property
    def up_codec(self) -> CodecSpec:
        return CodecSpec.parse(self.codec_up)

    @property
    def use_cuda(self) -> bool:
        return self.device == "cuda" or (self.device == "auto" and cuda_available())

    @property
    def use_bf16(self) -> bool:
        return self.precision == "bf16" or (self.precision == "auto" and self.use_cuda)

    @property
    def torch_device(self) -> str:
        return "cuda" if self.use_cuda else "cpu"

    def to_dict(self) -> dict[str, Any]:
        """``{run-config key: value}`` for every key, strings as given (for results files)."""
        return {k.replace("_", "-"): val for k, val in dataclasses.asdict(self).items()}


@lru_cache(maxsize=32)
def _validated(cls: type[AppConfig], items: tuple[tuple[str, Any], ...]) -> AppConfig:
    merged = {**pyproject_defaults(), **dict(items)}
    fields = {f.name.replace("_", "-"): f for f in dataclasses.fields(cls)}
    errors = [f"unknown run-config key '{key}' (known keys: {', '.join(sorted(fields))})"
              for key in merged if key not in fields]
    values: dict[str, Any] = {}
    for key, field in fields.items():
        try:
            values[field.name] = _coerce(key, merged.get(key), str(field.type))
        except ConfigError as err:
            errors.append(str(err))
    raise_errors(errors + rule_errors(values))
    return cls(**values)


def _coerce(key: str, value: Any, name: str) -> Any:
    if value is None:
        raise ConfigError(f"'{key}' is missing (no value and no default in pyproject.toml)")
    if name == "bool" and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    types = {"bool": bool, "int": int, "float": (int, float), "str": str}[name]
    if isinstance(value, types) and (name == "bool" or not isinstance(value, bool)):
        return float(value) if name == "float" else value
    raise ConfigError(f"'{key}' = {show(value)} is not allowed: must be of type {name}")
