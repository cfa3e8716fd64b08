"""Faults a new user meets: model-dependent values, resume, paths."""

from __future__ import annotations

import dataclasses
import json

import pytest
import timm
from flwr.app import ArrayRecord
from safetensors.torch import save_file

from fedvit.config.appconfig import AppConfig, ConfigError
from fedvit.config.resume import validate_server
from fedvit.model.build import build_model
from fedvit.model.tensors import exchanged_state
from server_app.federation import run_federation
from server_app.recorder import Checkpoint, save_checkpoint
from server_app.summary import Estimated
from simulate import RELATIVE, simulate

FAST = {"model-name": "test_vit", "img-size": 16, "patch-size": 4, "weights-path": ""}


# ---------------------------------------------------- values only the model can judge


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


# -------------------------------------- resume-from checked against its checkpoint


def _finished_run(folder, overrides: dict, rounds: int = 2):
    """A run folder as a finished run leaves it (config.json, configs.json, checkpoint after
    ``rounds``)."""
    cfg = AppConfig.from_run_config({**FAST, **overrides, "num-server-rounds": rounds})
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg.to_dict()))
    (folder / "configs.json").write_text(json.dumps([{"after-round": 0,
                                                      "config": cfg.to_dict()}]))
    arrays = ArrayRecord(exchanged_state(build_model(cfg, 10)))
    save_checkpoint(folder, Checkpoint(rounds, arrays, [], [], [], [], [],
                                       Estimated(rounds).as_row()))
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_resume_with_another_strategy_lists_every_frozen_key_and_writes_nothing(tmp_path):
    run = tmp_path / "fedlora-run"
    before = _finished_run(run, {"strategy": "fedlora"})
    cfg = AppConfig.from_run_config({**FAST, "strategy": "fedavg", "lora-r": 4,
                                     "learning-rate": 0.01, "num-server-rounds": 3,
                                     "resume-from": str(run)})
    with pytest.raises(ConfigError) as info:
        run_federation(None, cfg)
    message = str(info.value)
    assert f"'resume-from' = '{run}' is not allowed with a changed config" in message
    for shown in ("'strategy' = 'fedavg' (checkpoint: 'fedlora')",
                  "'lora-r' = 4 (checkpoint: 8)",
                  "'learning-rate' = 0.01 (checkpoint: 0.002)"):
        assert shown in message
    assert "num-server-rounds" not in message  # may change, and 3 > 2 rounds done
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()}
    assert after == before  # the earlier run lost nothing


def test_resume_needs_more_rounds_than_the_checkpoint_holds(tmp_path):
    run = tmp_path / "run"
    _finished_run(run, {"strategy": "fedlora"})
    cfg = AppConfig.from_run_config({**FAST, "num-server-rounds": 2, "resume-from": str(run)})
    with pytest.raises(ConfigError, match="'num-server-rounds' = 2 is not allowed with "
                                          f"'resume-from' = '{run}': that run completed 2 "
                                          "rounds; must be > 2"):
        validate_server(cfg)
    validate_server(dataclasses.replace(cfg, num_server_rounds=3, node_wait_s=5.0))


def test_resume_from_a_folder_without_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    cfg = AppConfig.from_run_config({**FAST, "resume-from": str(tmp_path)})
    with pytest.raises(ConfigError, match=f"'resume-from' = '{tmp_path}' is not allowed: "
                                          f"{tmp_path} holds no checkpoint"):
        run_federation(None, cfg)


# ------------------------------------------------ one meaning for every relative path



def _path_errors(overrides: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        AppConfig.from_run_config({**FAST, **overrides})
    return str(info.value).split("\n  - ")[1:]


@pytest.mark.parametrize("key", sorted(RELATIVE))
def test_relative_path_is_refused_in_process_whatever_the_cwd(key, tmp_path, monkeypatch):
    # In-process (run_simulation, fedvit-* commands) from two working directories.
    expected = None
    for cwd in (tmp_path, tmp_path.parent):
        monkeypatch.chdir(cwd)
        errors = _path_errors({key: RELATIVE[key]})
        assert len(errors) == 1 and errors[0].startswith(
            f"'{key}' = '{RELATIVE[key]}' is not allowed: a relative path is taken from another "
            "folder under `flwr run`")
        assert errors[0].endswith("pass an absolute path or ~/...")
        assert expected in (None, errors)
        expected = errors
    with pytest.raises(ConfigError) as info:  # run_simulation: refused before Ray starts
        simulate({**FAST, key: RELATIVE[key]})
    assert str(info.value).split("\n  - ")[1:] == expected


def test_absolute_home_and_special_values_are_accepted(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    (tmp_path / "data").mkdir()
    cfg = AppConfig.from_run_config({**FAST, "weights-path": "~/w.safetensors",
                                     "dataset": str(tmp_path / "data"), "outputs-dir": "~/out"})
    assert cfg.outputs_dir == "~/out"
    for dataset in ("digits", "uoft-cs/cifar100"):  # not paths: no path rule
        AppConfig.from_run_config({**FAST, "dataset": dataset})
    AppConfig.from_run_config({**FAST, "weights-path": "public-pretrain"})
