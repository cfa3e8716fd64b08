"""The report's input: run folders as the results writer left them, and their labels.

Reads only what is in each folder (``config.json``, ``summary.json``, ``rounds.json``,
``books.json``, ``phases.json``, ``nodes.json``); nothing is recomputed from training.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fedvit.keys import BOOKS, CONFIG_FILE, NODES, PHASES, ROUNDS, SUMMARY_FILE

LABEL_IGNORED_KEYS = ("outputs-dir", "run-name", "resume-from")  # bookkeeping, not factors
LABEL_MAX_KEYS = 3


class ReportError(Exception):
    """A run folder cannot be reported (missing or unreadable files)."""


@dataclass(frozen=True)
class Run:
    """One run folder's files, as the results writer left them."""

    path: Path
    config: dict
    summary: dict
    rounds: list[dict]
    books: list[dict]
    phases: list[dict]  # empty for runs that predate the timing analysis
    nodes: list[dict]  # ``nodes.json``: each ok reply's times, bytes and link; may be empty
    label: str = ""

    @property
    def phase_table(self) -> dict[str, dict[str, float]] | None:
        """``summary.json`` "phase-table" (mean of steady rounds), if the run has one."""
        return self.summary.get("phase-table")

    @property
    def links(self) -> dict | None:
        """``summary.json`` "links" (the configured network model), if the run has them."""
        return self.summary.get("links")

    @property
    def total_bytes(self) -> int:
        """Whole messages, both directions, all rounds."""
        b = self.summary["bytes"]
        return b["down-msg"] + b["up-msg"]


def _read_json(path: Path) -> Any:
    if not path.exists():
        raise ReportError(f"{path} is missing" + (
            " (summary.json is written when a run finishes)"
            if path.name == SUMMARY_FILE else ""))
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"{path} cannot be read: {e}") from e


def load_run(path: Path) -> Run:
    """One run folder.

    Args:
        path: the run folder (``<outputs-dir>/<run-name>``).

    Returns:
        Its files, unlabelled.

    Raises:
        ReportError: not a folder, or a required file is missing or unreadable.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_dir() or not (path / CONFIG_FILE).exists():
        what = ("no such folder" if not path.exists() else "a file" if not path.is_dir()
                else f"it has no {CONFIG_FILE}")
        raise ReportError(f"{path} is not a run folder ({what}): each RUN_DIR must be a "
                          "folder a run wrote, <outputs-dir>/<run-name>")
    return Run(path, _read_json(path / CONFIG_FILE), _read_json(path / SUMMARY_FILE),
               _read_json(path / f"{ROUNDS}.json"), _read_json(path / f"{BOOKS}.json"),
               _read_json(path / f"{PHASES}.json"), _read_json(path / f"{NODES}.json"))


def value_text(v: object) -> str:
    """A config value as the run config writes it (``true``/``false`` for booleans)."""
    return str(v).lower() if isinstance(v, bool) else str(v)


def _distinct_keys(config: dict, group: Sequence[dict]) -> list[str]:
    """Keys where ``config`` departs from its group: its value is not the most common one
    (when every value is equally common, as with two runs, each run shows the key)."""
    keys = []
    for k in config:
        if k in LABEL_IGNORED_KEYS:
            continue
        counts = Counter(value_text(c.get(k)) for c in group)
        if len(counts) > 1 and (counts[value_text(config[k])] < max(counts.values())
                                or len(set(counts.values())) == 1):
            keys.append(k)
    return keys


def _stamp(run: Run) -> str:
    """The run folder's name without its ``-<strategy>`` tail."""
    return run.path.name.replace(f"-{run.summary['strategy']}", "", 1)


def run_labels(runs: Sequence[Run]) -> list[str]:
    """Each run's label: its strategy, plus the config keys that set it apart from the runs
    of its strategy (a label shared by two runs gets their folders' time stamps).

    Args:
        runs: the runs of one report.

    Returns:
        One label per run, in order, all different.
    """
    labels = []
    for run in runs:
        strategy = run.summary["strategy"]
        group = [r.config for r in runs if r.summary["strategy"] == strategy]
        label = strategy
        if len(group) > 1:
            keys = _distinct_keys(run.config, group)
            parts = [f"{k}={value_text(run.config[k])}" for k in keys[:LABEL_MAX_KEYS]]
            if len(keys) > LABEL_MAX_KEYS:
                parts.append(f"+{len(keys) - LABEL_MAX_KEYS}")
            label = " ".join([strategy, *parts])  # no keys: the group's baseline
        labels.append(label)
    labels = [lb if labels.count(lb) == 1 else f"{lb} {_stamp(r)}"
              for lb, r in zip(labels, runs, strict=True)]
    # still equal (folders of one name in two places, or one folder twice): its place
    labels = [lb if labels.count(lb) == 1 else f"{lb} ({r.path.parent.name}/{r.path.name})"
              for lb, r in zip(labels, runs, strict=True)]
    return [lb if labels.count(lb) == 1 else f"{lb} #{i}"
            for i, lb in enumerate(labels, 1)]


def load_runs(paths: Sequence[Path]) -> list[Run]:
    """Every run folder of ``paths``, labelled (``run_labels``).

    Raises:
        ReportError: as ``load_run``.
    """
    runs = [load_run(p) for p in paths]
    return [replace(r, label=lb) for r, lb in zip(runs, run_labels(runs), strict=True)]


def steady_rounds(run: Run) -> list[int]:
    """The rounds ``summary.json`` averages: all but the first (or the only one)."""
    rounds = [p["round"] for p in run.phases] or [r["round"] for r in run.rounds]
    return rounds[1:] or rounds


def reference_run(runs: Sequence[Run]) -> Run:
    """What byte ratios compare with: the first fedavg run, else the first run."""
    return next((r for r in runs if r.summary["strategy"] == "fedavg"), runs[0])
