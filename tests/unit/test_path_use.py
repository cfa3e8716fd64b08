"""A path that cannot work is refused at validation, by its key: each
path key is checked for what the run does with it (create, write, read) before anything
is built or written."""

from __future__ import annotations

import pytest

from fedvit.config.appconfig import AppConfig, ConfigError
from fedvit.config.paths import server_path_errors
from server_app.federation import run_federation

FAST = {"model-name": "test_vit", "img-size": 16, "patch-size": 4, "weights-path": ""}


def _refused(overrides: dict, monkeypatch) -> str:
    def never(*args, **kwargs):
        raise AssertionError("the model was built before the path was checked")

    monkeypatch.setattr("server_app.federation.central_test_data", never)
    monkeypatch.setattr("server_app.federation.build_model", never)
    cfg = AppConfig.from_run_config({**FAST, **overrides})
    with pytest.raises(ConfigError) as info:
        run_federation(None, cfg)
    return str(info.value)


def test_outputs_dir_that_is_a_file_is_refused_before_the_model_is_built(tmp_path,
                                                                          monkeypatch):
    file = tmp_path / "results.txt"
    file.write_text("mine")
    message = _refused({"outputs-dir": str(file)}, monkeypatch)
    assert message == (f"invalid run config:\n  - 'outputs-dir' = '{file}' is not allowed: "
                       f"{file} is a file, not a folder; must be an absolute folder path "
                       "the run can create or write into")
    assert file.read_text() == "mine"


def test_outputs_dir_below_a_file_is_refused(tmp_path, monkeypatch):
    file = tmp_path / "results.txt"
    file.write_text("mine")
    message = _refused({"outputs-dir": str(file / "runs" / "today")}, monkeypatch)
    assert (f"'outputs-dir' = '{file / 'runs' / 'today'}' is not allowed: {file} is a file, "
            f"so {file / 'runs' / 'today'} cannot be created") in message


def test_resume_from_a_file_is_refused_by_its_key(tmp_path, monkeypatch):
    file = tmp_path / "checkpoint.json"
    file.write_text("{}")
    message = _refused({"resume-from": str(file)}, monkeypatch)
    assert f"'resume-from' = '{file}' is not allowed: {file} is a file, not a folder" in message


def test_folders_that_work_pass(tmp_path):
    assert server_path_errors(str(tmp_path / "new" / "deeper"), "") == []
    assert server_path_errors(str(tmp_path), "") == []
    assert server_path_errors(str(tmp_path), str(tmp_path / "missing")) == []  # resume's own


def test_dataset_that_is_a_file_is_refused_at_validation(tmp_path):
    file = tmp_path / "images.zip"
    file.write_bytes(b"PK")
    with pytest.raises(ConfigError, match=r"'dataset' = '.*images.zip' is not allowed: must "
                                          r"be 'digits', an existing local dataset folder"):
        AppConfig.from_run_config({**FAST, "dataset": str(file)})
