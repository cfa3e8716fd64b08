"""Where things are: the app's folder, the artefact cache, and the path-valued keys' rules.

Relative paths are refused: under ``flwr run`` the app runs from its install folder
(``.flwr/apps/<bundle>/``, or the SuperLink's app folder in a deployment), in-process from
the project, so a relative path would mean two things.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

APP_ROOT = Path(__file__).resolve().parents[1]
PUBLIC_PRETRAIN = "public-pretrain"
EMBEDDED_DATASET = "digits"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Every path-valued key, and what it may be.
PATH_KEYS = {
    "weights-path": f"'', '{PUBLIC_PRETRAIN}' or an absolute path to a .safetensors/.pth file",
    "dataset": f"'{EMBEDDED_DATASET}', a hub id 'owner/name' or an absolute path to a "
               "local dataset folder",
    "outputs-dir": "an absolute folder path",
    "resume-from": "'' or the absolute path of an earlier run's folder",
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
        True for ``digits``, an existing absolute folder, or a hub id ``owner/name``.
    """
    if name == EMBEDDED_DATASET:
        return True
    if resolve_path(name).is_absolute():
        return resolve_path(name).is_dir()
    return bool(HUB_ID.match(name)) and not name.startswith((".", "/", "~"))
