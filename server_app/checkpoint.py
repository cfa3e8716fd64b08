"""Per-round checkpoints, so a run can resume (``resume-from = <run folder>``).

After every round the run folder gets, atomically, ``checkpoint.safetensors`` (the global
tensors as they travel) and ``checkpoint.json`` (the round, the books, the rows so far).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ArrayRecord
from safetensors.torch import load_file, save_file

from fedvit.files import atomic_path, write_json
from fedvit.keys import CHECKPOINT_STATE as STATE
from fedvit.keys import CHECKPOINT_TENSORS as TENSORS
from strategies import BookRow


@dataclass
class Checkpoint:
    """What a run had completed after ``round``."""

    round: int
    arrays: ArrayRecord
    books: list[BookRow]
    rounds: list[dict]
    phases: list[dict]
    rejections: list[dict]
    nodes: list[dict]  # server_app.timeline.NodeTimes rows
    estimated: dict  # server_app.estimate.Estimated through this round, as a row


def save(run_dir: Path, ckpt: Checkpoint) -> None:
    """Write both files atomically (tensors first, then the state that names the round)."""
    with atomic_path(run_dir / TENSORS) as tmp:
        save_file({k: v.contiguous() for k, v in ckpt.arrays.to_torch_state_dict().items()},
                  str(tmp))
    state = {f.name: getattr(ckpt, f.name) for f in dataclasses.fields(ckpt)[2:]}
    write_json(run_dir / STATE, {"round": ckpt.round, **state,
                                 "books": [r.as_row() for r in ckpt.books]}, indent=None)


def load(run_dir: Path) -> Checkpoint:
    """The checkpoint of a run folder."""
    state = json.loads((run_dir / STATE).read_text())
    return Checkpoint(**{**state, "arrays": ArrayRecord(load_file(str(run_dir / TENSORS))),
                         "books": [BookRow.from_row(r) for r in state["books"]]})
