"""AppConfig: pyproject defaults, coercion and every validation message."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest
import torch

from fedvit.codecs.spec import CodecSpec
from fedvit.config.appconfig import AppConfig, ConfigError, pyproject_defaults
from fedvit.config.paths import APP_ROOT, resolve_path
from fedvit.config.rules import target_modules

# Offline and small: no hub weights, no public pretraining.
FAST = {"weights-path": ""}


def _pyproject_table() -> dict:
    with open(APP_ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["flwr"]["app"]["config"]


def _errors(overrides: dict) -> list[str]:
    """The bullet lines of the ConfigError raised for ``overrides``."""
    with pytest.raises(ConfigError) as info:
        AppConfig.from_run_config(overrides)
    message = str(info.value)
    head, *bullets = message.split("\n  - ")
    assert head == "invalid run config:"
    return bullets


def test_defaults_validate_and_match_pyproject() -> None:
    table = _pyproject_table()
    cfg = AppConfig.from_run_config({})
    assert cfg.to_dict() == table
    assert pyproject_defaults() == table
    assert cfg.strategy == "fedlora"
    assert cfg.lora_r == 8
    assert cfg.lora_alpha == 16.0
    assert cfg.model_name == "test_vit"
    assert cfg.img_size == 16 and cfg.patch_size == 4
    assert cfg.pretrained is False
    assert cfg.weights_path == "public-pretrain"
    assert cfg.dataset == "digits" and cfg.partitioner == "iid"
    assert cfg.learning_rate == 0.002 and isinstance(cfg.learning_rate, float)
    assert cfg.fraction_train == 1.0 and isinstance(cfg.fraction_train, float)
    # every dataclass field has exactly one pyproject key
    assert {f.name.replace("_", "-") for f in dataclasses.fields(AppConfig)} == set(table)


def test_docs_table_gives_every_key_its_pyproject_default() -> None:
    """docs/run-config.md's table of keys names every key with its pyproject default."""
    rows: dict[str, str] = {}
    page = (APP_ROOT / "docs" / "run-config.md").read_text()
    section = page.split("\n## Keys\n", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`"):
            for key in re.findall(r"`([a-z0-9-]+)`", cells[0]):
                rows[key] = cells[1].strip("`")
    for key, default in _pyproject_table().items():
        shown = str(default).lower() if isinstance(default, bool) else str(default)
        assert rows.get(key) == (shown or '""'), key


def test_overrides_are_merged_onto_defaults() -> None:
    cfg = AppConfig.from_run_config({"strategy": "fedavg", "lora-r": 4, "lora-alpha": 8})
    assert cfg.strategy == "fedavg"
    assert cfg.lora_r == 4
    assert cfg.lora_alpha == 8.0 and isinstance(cfg.lora_alpha, float)
    assert cfg.batch_size == _pyproject_table()["batch-size"]


def test_bool_accepts_true_false_strings() -> None:
    assert AppConfig.from_run_config({**FAST, "pretrained": "True"}).pretrained is True
    assert AppConfig.from_run_config({**FAST, "pretrained": "false"}).pretrained is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only defaults")
def test_cpu_defaults_pick_cpu_fp32() -> None:
    cfg = AppConfig.from_run_config({})
    assert cfg.use_cuda is False
    assert cfg.torch_device == "cpu"
    assert cfg.use_bf16 is False
    assert AppConfig.from_run_config({"precision": "bf16"}).use_bf16 is True


def test_codec_specs_are_parsed_once_into_the_config() -> None:
    cfg = AppConfig.from_run_config({"codec-down": "int4:64", "codec-up": "topk:0.05"})
    assert cfg.down_codec == CodecSpec("int4", block_size=64)
    assert cfg.up_codec == CodecSpec("topk", topk_fraction=0.05)
    assert cfg.down_codec is cfg.down_codec  # parsed once per config object
    assert AppConfig.from_run_config({"codec-down": "int4:64", "codec-up": "topk:0.05"}
                                     ).up_codec is cfg.up_codec  # one object per run config
    # Results files keep the run config's spelling.
    assert (cfg.to_dict()["codec-down"], cfg.to_dict()["codec-up"]) == ("int4:64", "topk:0.05")
    defaults = AppConfig.from_run_config({})
    assert defaults.down_codec == CodecSpec.parse(defaults.codec_down)


VIT_RULE = "a timm Vision Transformer name (timm.list_models(module='vision_transformer'))"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"strategy": "fedsgd"},
         "'strategy' = 'fedsgd' is not allowed: must be one of ('fedavg', 'fedlora')"),
        ({"lora-r": 0}, "'lora-r' = 0 is not allowed: must be an integer >= 1"),
        ({"eval-batch-size": 0},
         "'eval-batch-size' = 0 is not allowed: must be an integer >= 1"),
        ({"learning-rate": -0.1}, "'learning-rate' = -0.1 is not allowed: must be a number > 0"),
        ({"model-name": "resnet50"},
         f"'model-name' = 'resnet50' is not allowed: must be {VIT_RULE}"),
        ({"model-name": "no_such_vit"},
         f"'model-name' = 'no_such_vit' is not allowed: must be {VIT_RULE}"),
        ({"dataset": "nonsense"},
         "'dataset' = 'nonsense' is not allowed: must be 'digits', an existing local dataset "
         "folder, or a hub id 'owner/name'"),
        ({"partitioner": "pathological"},
         "'partitioner' = 'pathological' is not allowed: must be one of ('iid', 'dirichlet')"),
        ({"precision": "fp8"},
         "'precision' = 'fp8' is not allowed: must be one of ('auto', 'fp32', 'bf16')"),
        ({"device": "tpu"},
         "'device' = 'tpu' is not allowed: must be one of ('auto', 'cpu', 'cuda')"),
        ({"fraction-train": 0},
         "'fraction-train' = 0.0 is not allowed: must be a number in (0, 1]"),
        ({"fraction-train": 1.5},
         "'fraction-train' = 1.5 is not allowed: must be a number in (0, 1]"),
        ({"dirichlet-alpha": 0},
         "'dirichlet-alpha' = 0.0 is not allowed: must be a number > 0"),
        ({"img-size": 18, "patch-size": 4},
         "'img-size' = 18 is not allowed with 'patch-size' = 4: must be a multiple of the "
         "patch size"),
        ({"lora-r": "8"}, "'lora-r' = '8' is not allowed: must be of type int"),
        ({"lora-r": True}, "'lora-r' = true is not allowed: must be of type int"),
        ({"learning-rate": "0.1"},
         "'learning-rate' = '0.1' is not allowed: must be of type float"),
        ({"pretrained": "yes"}, "'pretrained' = 'yes' is not allowed: must be of type bool"),
    ],
)
def test_bad_value_is_named_with_rule(overrides: dict, expected: str) -> None:
    assert _errors({**FAST, **overrides}) == [expected]


def test_unknown_key_is_named_with_known_keys() -> None:
    (error,) = _errors({**FAST, "lora-rank": 8})
    known = ", ".join(sorted(_pyproject_table()))
    assert error == f"unknown run-config key 'lora-rank' (known keys: {known})"


def test_missing_weights_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.safetensors"
    assert _errors({"weights-path": str(missing)}) == [
        f"'weights-path' = '{missing}' is not allowed: no such file this process can read "
        f"({missing}); must be '', "
        "'public-pretrain', or an existing .safetensors/.pth file"
    ]


def test_existing_weights_file_is_accepted(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    assert AppConfig.from_run_config({"weights-path": str(weights)}).weights_path == str(weights)


def test_pretrained_with_weights_path(tmp_path: Path) -> None:
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    assert _errors({"pretrained": True, "weights-path": str(weights)}) == [
        f"'pretrained' = true is not allowed with 'weights-path' = '{weights}': choose hub "
        "weights or a weights file, not both"
    ]


def test_public_pretrain_needs_digits(tmp_path: Path) -> None:
    folder = tmp_path / "my-dataset"
    folder.mkdir()
    # the folder alone is a valid dataset ...
    assert AppConfig.from_run_config({**FAST, "dataset": str(folder)}).dataset == str(folder)
    # ... but the public pretraining split exists only for digits
    assert _errors({"weights-path": "public-pretrain", "dataset": str(folder)}) == [
        f"'weights-path' = 'public-pretrain' is not allowed with 'dataset' = '{folder}': the "
        "public pretraining split exists only for 'digits'; use 'pretrained' = true or a "
        "weights file"
    ]


def test_hub_id_is_a_valid_dataset() -> None:
    assert AppConfig.from_run_config({**FAST, "dataset": "uoft-cs/cifar100"}).dataset == (
        "uoft-cs/cifar100"
    )


def test_several_bad_keys_listed_in_one_message() -> None:
    errors = _errors({**FAST, "strategy": "fedsgd", "lora-r": 0, "precision": "fp8"})
    assert errors == [
        "'strategy' = 'fedsgd' is not allowed: must be one of ('fedavg', 'fedlora')",
        "'lora-r' = 0 is not allowed: must be an integer >= 1",
        "'precision' = 'fp8' is not allowed: must be one of ('auto', 'fp32', 'bf16')",
    ]


def test_type_errors_do_not_hide_rule_errors() -> None:
    errors = _errors({**FAST, "lora-r": "8", "strategy": "fedsgd", "img-size": 15})
    assert len(errors) == 3
    assert errors[0].startswith("'lora-r' = '8'")
    assert errors[1].startswith("'strategy' = 'fedsgd'")
    assert errors[2].startswith("'img-size' = 15 is not allowed with 'patch-size' = 4")


def test_several_type_errors_listed_in_one_message() -> None:
    errors = _errors({**FAST, "lora-r": "8", "seed": 1.5})
    assert errors == [
        "'lora-r' = '8' is not allowed: must be of type int",
        "'seed' = 1.5 is not allowed: must be of type int",
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_device_without_cuda() -> None:
    assert _errors({**FAST, "device": "cuda"}) == [
        "'device' = 'cuda' is not allowed: no CUDA device is available"
    ]


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_target_modules() -> None:
    assert target_modules("qkv, proj") == ["qkv", "proj"]
    assert target_modules(" qkv ,, fc1 ,") == ["qkv", "fc1"]
    assert target_modules(" , ") == []


def test_empty_target_modules_rejected() -> None:
    assert _errors({**FAST, "lora-target-modules": " , "}) == [
        "'lora-target-modules' = ' , ' is not allowed: must be a comma-separated list of "
        "module names, e.g. 'qkv' or 'qkv,proj'"
    ]


def test_resolve_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_path(str(tmp_path / "x.pth")) == tmp_path / "x.pth"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_path("~/fedvit-outputs") == tmp_path / "fedvit-outputs"
    assert resolve_path("~") == tmp_path


def test_compile_is_a_bool_and_off_by_default() -> None:
    assert AppConfig.from_run_config(FAST).compile is False
    assert _errors({**FAST, "compile": "yes"}) == [
        "'compile' = 'yes' is not allowed: must be of type bool"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_compile_without_a_compiler_is_refused(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no c++, g++, clang++
    monkeypatch.delenv("CXX", raising=False)
    assert _errors({**FAST, "compile": True, "device": "cpu"}) == [
        "'compile' = true is not allowed on this machine: torch.compile needs a C++ compiler "
        "(CXX or one of c++, g++, clang++ on PATH); must be false here"]
    compiler = tmp_path / "g++"  # any executable of that name satisfies the check
    compiler.write_text("#!/bin/sh\n")
    compiler.chmod(0o755)
    assert AppConfig.from_run_config({**FAST, "compile": True, "device": "cpu"}).compile
