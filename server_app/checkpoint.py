"""Per-round checkpoints: the exchanged global tensors and the books, so a run can resume.

After every round the server writes ``checkpoint.safetensors`` (the global tensors as they
travel) and ``checkpoint.json`` (the round, the books' rows, the round and phase rows) into
the run folder, atomically. ``resume-from = <run folder>`` restarts at the next round and
goes on writing into that folder.
"""

from __future__ import annotations

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
    state = {"round": ckpt.round, "books": [r.as_row() for r in ckpt.books],
             "rounds": ckpt.rounds, "phases": ckpt.phases, "rejections": ckpt.rejections,
             "nodes": ckpt.nodes, "estimated": ckpt.estimated}
    write_json(run_dir / STATE, state, indent=None)


def load(run_dir: Path) -> Checkpoint:
    """The checkpoint of a run folder."""
    state = json.loads((run_dir / STATE).read_text())
    tensors = load_file(str(run_dir / TENSORS))
    return Checkpoint(
        round=state["round"],
        arrays=ArrayRecord(tensors),
        books=[BookRow.from_row(r) for r in state["books"]],
        rounds=state["rounds"],
        phases=state["phases"],
        rejections=state["rejections"],
        nodes=state["nodes"],
        estimated=state["estimated"],
    )


