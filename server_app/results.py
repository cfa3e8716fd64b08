"""A run's folder and its files (``fedvit.schema``), rewritten after every round."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

from fedvit import schema
from fedvit.config.appconfig import AppConfig
from fedvit.config.paths import resolve_path
from fedvit.files import atomic_path, write_json


def new_run_dir(cfg: AppConfig) -> Path:
    """``<outputs-dir>/<run-name or YYYYmmdd-HHMMSS-strategy>``, suffixed ``-2``... if it
    exists; created, absolute."""
    root = resolve_path(cfg.outputs_dir)
    stamp = cfg.run_name or f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.strategy}"
    path, n = root / stamp, 1
    while path.exists():
        n += 1
        path = root / f"{stamp}-{n}"
    path.mkdir(parents=True)
    return path


class ResultsWriter:
    """Writes a run's files; each call rewrites its file atomically."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def write_json(self, name: str, data: Any) -> None:
        write_json(self.run_dir / name, data)

    def write_table(self, stem: str, rows: list[dict]) -> None:
        """Rewrite ``<stem>.csv`` and ``<stem>.json`` (``stem``: a ``fedvit.schema.TABLES``
        table) with ``rows``; ``ValueError`` (nothing written) unless each row has exactly
        the schema's columns in its order."""
        expected = schema.columns(stem)
        for row in rows:
            if list(row) != expected:
                raise ValueError(f"{stem} row {row!r} does not have the columns of "
                                 f"fedvit.schema ({expected})")
        self.write_json(f"{stem}.json", rows)
        if not rows:
            return
        with atomic_path(self.run_dir / f"{stem}.csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
