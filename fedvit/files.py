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
    """A temporary path ``.<name>.<pid>.tmp`` beside ``path`` (atomic ``os.replace`` needs one
    file system; per process, so concurrent builders never share it) that replaces ``path``
    when the block ends without error, else is removed. The folder must exist."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any, indent: int | None = 2) -> None:
    """Replace a file with ``data`` as JSON and a newline, atomically (TypeError: not JSON)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=indent) + "\n")
