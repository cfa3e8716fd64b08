"""The app's folder, the artefact cache, the path keys' rules. Relative paths are refused: under
``flwr run`` the app runs from its install folder (``.flwr/apps/<bundle>/``), not the project."""

from __future__ import annotations

import os
import re
from pathlib import Path

APP_ROOT = Path(__file__).resolve().parents[2]
PUBLIC_PRETRAIN = "public-pretrain"
EMBEDDED_DATASET = "digits"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PATH_KEYS = {
    "weights-path": f"'', '{PUBLIC_PRETRAIN}' or an absolute path to a .safetensors/.pth file",
    "dataset": f"'{EMBEDDED_DATASET}', a hub id 'owner/name' or an absolute path to a "
               "local dataset folder",
    "outputs-dir": "an absolute folder path the run can create or write into",
    "resume-from": "'' or the absolute path of an earlier run's folder (the run writes "
                   "into it)",
}


def cache_dir() -> Path:
    """``$FEDVIT_CACHE``, default ``~/.cache/fedvit`` (not created here)."""
    return Path(os.environ.get("FEDVIT_CACHE", Path.home() / ".cache" / "fedvit"))


def resolve_path(path: str) -> Path:
    """A run-config path with ``~`` expanded, nothing else resolved (a hub id stays relative)."""
    return Path(os.path.expanduser(path))


def is_relative_path(key: str, value: str) -> bool:
    """Whether ``value`` of ``key`` is a relative path (refused); ``''``, ``public-pretrain``,
    ``digits``, a hub id and keys outside ``PATH_KEYS`` are not paths."""
    if key not in PATH_KEYS or value == "" or (key, value) in (
            ("weights-path", PUBLIC_PRETRAIN), ("dataset", EMBEDDED_DATASET)):
        return False
    if key == "dataset" and not value.startswith(".") and (HUB_ID.match(value) or "/" not in value):
        return False  # a hub id, or a name (refused by the dataset rule if unknown)
    return not resolve_path(value).is_absolute()


def is_dataset(name: str) -> bool:
    """``digits``, an existing absolute folder this process can read, or a hub id."""
    if name == EMBEDDED_DATASET:
        return True
    path = resolve_path(name)
    if path.is_absolute():
        return path.is_dir() and os.access(path, os.R_OK | os.X_OK)
    return bool(HUB_ID.match(name)) and not name.startswith((".", "/", "~"))


def server_path_errors(outputs_dir: str, resume_from: str) -> list[str]:
    """The server's folder to write: ``resume-from``'s when set, else ``outputs-dir`` (which it
    creates). Clients never touch these two keys, so they are checked only here."""
    key, value, create = (("resume-from", resume_from, False) if resume_from
                          else ("outputs-dir", outputs_dir, True))
    path = resolve_path(value)
    if not path.is_absolute() or not (create or path.exists()):
        return []  # refused as a relative path, or as a folder without a checkpoint
    parent = next(p for p in (path, *path.parents) if p.exists())
    if parent == path and not path.is_dir():
        why = f"{path} is a file, not a folder"
    elif parent == path and not os.access(path, os.W_OK | os.X_OK):
        why = f"{path} is a folder this process cannot write into"
    elif not parent.is_dir():
        why = f"{parent} is a file, so {path} cannot be created"
    elif not os.access(parent, os.W_OK | os.X_OK):
        why = f"{parent} cannot be written into, so {path} cannot be created"
    else:
        return []
    return [f"'{key}' = {value!r} is not allowed: {why}; must be {PATH_KEYS[key]}"]
