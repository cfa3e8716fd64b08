"""Faults a new user meets (issue 13): model-dependent values, resume, paths."""

from __future__ import annotations

import pytest
import timm
from safetensors.torch import save_file

from fedvit.config import AppConfig, ConfigError
from server_app.federation import run_federation

FAST = {"model-name": "test_vit", "img-size": 16, "patch-size": 4, "weights-path": ""}


# ------------------------------------------- item 1: values only the model can judge


def _refused_before_writing(tmp_path, overrides: dict) -> str:
    out = tmp_path / "out"
    cfg = AppConfig.from_run_config({**FAST, **overrides, "outputs-dir": str(out)})
    with pytest.raises(ConfigError) as info:
        run_federation(None, cfg)  # fails before it needs a grid
    assert not out.exists()  # no run folder left behind
    return str(info.value)


def test_img_size_not_a_multiple_of_the_models_own_patch(tmp_path):
    message = _refused_before_writing(tmp_path, {"img-size": 20, "patch-size": 0})
    assert ("'img-size' = 20 is not allowed with 'patch-size' = 0 (the model's own patch "
            "size, 16) of 'test_vit': the model would crop or pad the input; must be a "
            "multiple of 16, e.g. 16 or 32") in message


def test_unknown_target_module_and_bad_size_in_one_error(tmp_path):
    message = _refused_before_writing(
        tmp_path, {"img-size": 40, "patch-size": 0, "lora-target-modules": "qkv,nope"})
    assert message.count("\n  - ") == 2
    assert "'img-size' = 40" in message and "'lora-target-modules' = 'qkv,nope'" in message


def test_weights_file_that_does_not_fit(tmp_path):
    path = tmp_path / "wider.safetensors"
    wider = timm.create_model("test_vit3", img_size=16, patch_size=4, num_classes=10)
    save_file({k: v.contiguous() for k, v in wider.state_dict().items()}, str(path))
    message = _refused_before_writing(tmp_path, {"weights-path": str(path)})
    assert message.startswith(f"'weights-path' = '{path}' does not fit the model: ")
    assert "must be '', 'public-pretrain' or a weights file of the same architecture" in message
