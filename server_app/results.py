"""The results writer: a run's folder, rewritten after every round so nothing is lost.

Files (format documented in README.md):
``config.json`` the validated run config; ``rounds.csv``/``rounds.json`` one row per round;
``books.csv``/``books.json`` one row per round x phase x node x direction;
``summary.json`` totals, final accuracy, the bandwidth estimate against the measurement.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

from fedvit.config import AppConfig
from fedvit.files import atomic_path, write_json
from fedvit.paths import resolve_path


def new_run_dir(cfg: AppConfig) -> Path:
    """``<outputs-dir>/<run-name>``, by default ``<YYYYmmdd-HHMMSS>-<strategy>``; suffixed
    if it exists; absolute."""
    root = resolve_path(cfg.outputs_dir)
    stamp = cfg.run_name or f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.strategy}"
    path = root / stamp
    n = 1
    while path.exists():
        n += 1
        path = root / f"{stamp}-{n}"
    path.mkdir(parents=True)
    return path


class ResultsWriter:
    """Writes a run's files; each call rewrites the file it owns (atomically)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def write_json(self, name: str, data: Any) -> None:
        write_json(self.run_dir / name, data)

    def write_table(self, stem: str, rows: list[dict]) -> None:
        """``<stem>.csv`` and ``<stem>.json`` with the same rows."""
        self.write_json(f"{stem}.json", rows)
        if not rows:
            return
        with atomic_path(self.run_dir / f"{stem}.csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
