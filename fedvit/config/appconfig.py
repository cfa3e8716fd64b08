"""The run config, read once into one typed, validated object.

Every default lives in ``pyproject.toml`` (``[tool.flwr.app.config]``); nothing else reads
``context.run_config`` directly. What each key may be is stated in ``fedvit.config.rules``
(paths: ``fedvit.config.paths``); the checks against a run folder to resume are in
``fedvit.config.resume``.
"""

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
    """Raise one ``ConfigError`` listing every error.

    Args:
        errors: messages, one per violation (none: nothing happens).

    Raises:
        ConfigError: ``invalid run config:``, then a ``  - <error>`` line per error.
    """
    if errors:
        raise ConfigError("invalid run config:\n  - " + "\n  - ".join(errors))


@lru_cache(maxsize=1)
def pyproject_defaults() -> dict[str, Any]:
    """Every default of the run config.

    Returns:
        The ``[tool.flwr.app.config]`` table of the app's pyproject.toml.

    Raises:
        OSError: pyproject.toml cannot be read.
    """
    with open(APP_ROOT / "pyproject.toml", "rb") as f:
        return dict(tomllib.load(f)["tool"]["flwr"]["app"]["config"])


@dataclass(frozen=True)
class AppConfig:
    """Every knob of the app, one field per ``[tool.flwr.app.config]`` key (``-`` in a
    key is ``_`` in its field); build it with ``from_run_config``.

    The codec specs are parsed once, here: ``down_codec`` and ``up_codec``.
    """

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
        """Validate a run config; missing keys fall back to pyproject.toml's defaults
        (``run_simulation`` hands apps an empty run config).

        Validated once per distinct run config and process (clients call this per message).

        Args:
            run_config: run-config keys and values (Flower's ``context.run_config``).

        Returns:
            The config.

        Raises:
            ConfigError: listing every unknown key, wrongly typed value and broken rule.
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
        raise_errors(errors + rule_errors(values))
        return cls(**values)

    @cached_property
    def down_codec(self) -> CodecSpec:
        """``codec-down`` parsed: how the server encodes the model it sends."""
        return CodecSpec.parse(self.codec_down)

    @cached_property
    def up_codec(self) -> CodecSpec:
        """``codec-up`` parsed: how a client encodes the update it sends back."""
        return CodecSpec.parse(self.codec_up)

    @property
    def use_cuda(self) -> bool:
        """Whether training runs on the GPU (``device``, or ``auto`` and one is there)."""
        return self.device == "cuda" or (self.device == "auto" and cuda_available())

    @property
    def use_bf16(self) -> bool:
        """bf16 autocast: asked for, or ``auto`` on a GPU."""
        return self.precision == "bf16" or (self.precision == "auto" and self.use_cuda)

    @property
    def torch_device(self) -> str:
        """``'cuda'`` or ``'cpu'``: where the model trains and evaluates."""
        return "cuda" if self.use_cuda else "cpu"

    def to_dict(self) -> dict[str, Any]:
        """The config as the run config spells it (for results files).

        Returns:
            ``{run-config key: value}``, every key; strings as given (codec specs too).
        """
        return {k.replace("_", "-"): val for k, val in dataclasses.asdict(self).items()}


@lru_cache(maxsize=32)
def _validated(cls: type[AppConfig], items: tuple[tuple[str, Any], ...]) -> AppConfig:
    return cls._validate(dict(items))


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
    raise ConfigError(f"'{key}' = {show(value)} is not allowed: must be of type {name}")
