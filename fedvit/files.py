"""Writing a file so that a reader never sees half of it: the one atomic-write helper."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; it replaces ``path`` when the
    block ends without an error, and is removed when it raises.

    The temporary file sits in the same folder (``os.replace`` is atomic only within one
    file system) and is named per process, so processes that build the same cache file at
    once never write into each other's temporary file. The folder must exist.

    Args:
        path: the file to (re)write.

    Yields:
        The temporary path, ``.<name>.<pid>.tmp`` beside ``path``.

    Raises:
        OSError: the temporary file cannot be written or moved into place.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Replace a file's content atomically (see ``atomic_path``).

    Args:
        path: the file (its folder must exist).
        text: the new content, written as UTF-8.

    Raises:
        OSError: as ``atomic_path`` raises.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data: Any, indent: int | None = 2) -> None:
    """Replace a file with JSON atomically (see ``atomic_path``).

    Args:
        path: the file (its folder must exist).
        data: what to write, then a trailing newline.
        indent: JSON indentation (None: one line).

    Raises:
        OSError: as ``atomic_path`` raises.
        TypeError: ``data`` holds a value JSON cannot encode.
    """
    write_text(path, json.dumps(data, indent=indent) + "\n")
