"""Where things are: the app's folder, the artefact cache, and the path-valued keys' rules.

Relative paths are refused: under ``flwr run`` the app runs from its install folder
(``.flwr/apps/<bundle>/``, or the SuperLink's app folder in a deployment), in-process from
the project, so a relative path would mean two things.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

APP_ROOT = Path(__file__).resolve().parents[2]
PUBLIC_PRETRAIN = "public-pretrain"
EMBEDDED_DATASET = "digits"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Every path-valued key, and what it may be.
PATH_KEYS = {
    "weights-path": f"'', '{PUBLIC_PRETRAIN}' or an absolute path to a .safetensors/.pth file",
    "dataset": f"'{EMBEDDED_DATASET}', a hub id 'owner/name' or an absolute path to a "
               "local dataset folder",
    "outputs-dir": "an absolute folder path the run can create or write into",
    "resume-from": "'' or the absolute path of an earlier run's folder (the run writes "
                   "into it)",
}


def cache_dir() -> Path:
    """Where built artefacts are kept.

    Returns:
        ``$FEDVIT_CACHE``, default ``~/.cache/fedvit`` (not created here).
    """
    return Path(os.environ.get("FEDVIT_CACHE", Path.home() / ".cache" / "fedvit"))


def resolve_path(path: str) -> Path:
    """A user path with ``~`` expanded.

    Validation refuses relative paths (``is_relative_path``), so every path that reaches
    here is absolute; a hub id ``owner/name`` comes back as a relative path, which names
    no local folder.

    Args:
        path: a run-config path value.

    Returns:
        The path, ``~`` expanded, nothing else resolved.
    """
    return Path(os.path.expanduser(path))


def is_relative_path(key: str, value: str) -> bool:
    """Whether ``value`` of the path-valued ``key`` is a relative path (refused).

    Special values are not paths: ``''``, ``public-pretrain``, ``digits``, a hub id
    ``owner/name``.

    Args:
        key: a run-config key (keys outside ``PATH_KEYS`` are never paths).
        value: its value.

    Returns:
        True for a relative path after ``~`` expansion.
    """
    if key not in PATH_KEYS or value == "":
        return False
    if (key, value) in (("weights-path", PUBLIC_PRETRAIN), ("dataset", EMBEDDED_DATASET)):
        return False
    if key == "dataset" and (HUB_ID.match(value) and not value.startswith(".")
                             or not value.startswith(".") and "/" not in value):
        return False  # a hub id, or a name (refused by the dataset rule if unknown)
    return not resolve_path(value).is_absolute()


def is_dataset(name: str) -> bool:
    """Whether ``name`` is a dataset the app can load.

    Args:
        name: the ``dataset`` value.

    Returns:
        True for ``digits``, an existing absolute folder this process can read, or a hub
        id ``owner/name``.
    """
    if name == EMBEDDED_DATASET:
        return True
    if resolve_path(name).is_absolute():
        return resolve_path(name).is_dir() and os.access(resolve_path(name), os.R_OK | os.X_OK)
    return bool(HUB_ID.match(name)) and not name.startswith((".", "/", "~"))


def folder_write_error(path: Path, create: bool) -> str | None:
    """Why the run could not write into folder ``path`` (or create it, with ``create``).

    Args:
        path: an absolute folder path.
        create: whether the run creates the folder (with its parents) when it is missing.

    Returns:
        The reason (``'<path> is a file, not a folder'``, ...), or None when it can.
    """
    if path.exists():
        if not path.is_dir():
            return f"{path} is a file, not a folder"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{path} is a folder this process cannot write into"
        return None
    if not create:
        return f"{path} does not exist"
    parent = next(p for p in path.parents if p.exists())
    if not parent.is_dir():
        return f"{parent} is a file, so {path} cannot be created"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} cannot be written into, so {path} cannot be created"
    return None


def server_path_errors(outputs_dir: str, resume_from: str) -> list[str]:
    """The server's path keys checked for what the run does with them: it creates
    ``outputs-dir`` (and the run folder in it) or writes into ``resume-from``'s folder.

    (``weights-path`` and ``dataset``, which every side reads, are checked with the other
    rules; clients never touch these two, so they are not checked there.)

    Args:
        outputs_dir: the ``outputs-dir`` value (absolute; relative ones are refused).
        resume_from: the ``resume-from`` value ('' for a new run).

    Returns:
        One message per key that cannot work, naming the key, the value and the rule.
    """
    checks = [("resume-from", resume_from, False)] if resume_from else [
        ("outputs-dir", outputs_dir, True)]
    errors = []
    for key, value, create in checks:
        path = resolve_path(value)
        if not path.is_absolute() or not (create or path.exists()):
            continue  # refused as a relative path, or as a folder without a checkpoint
        why = folder_write_error(path, create)
        if why:
            errors.append(f"'{key}' = {value!r} is not allowed: {why}; must be "
                          f"{PATH_KEYS[key]}")
    return errors
