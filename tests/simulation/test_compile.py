"""``compile`` = true: the clients train through torch.compile, and nothing that travels or
is booked changes (tensor names, shapes, dtypes, bytes of every message)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from flwr.app import Context, Message

from fedvit.keys import CONFIG_FILE, TRAIN_LOSS
from simulate import FAST, client_app, simulate

# One round, one epoch, one batch per client (a partition holds fewer than 1024 training
# images), so each client compiles one graph: on the CPU about half a minute a process.
ONE_STEP = {**FAST, "strategy": "fedlora", "num-server-rounds": 1, "local-epochs": 1,
            "batch-size": 1024, "device": "cpu"}


def graphs_mod(folder: Path):
    """A client mod writing how many graphs dynamo compiled in its process so far."""

    def mod(msg: Message, context: Context, call_next) -> Message:
        reply = call_next(msg, context)
        from torch._dynamo.utils import counters

        (folder / f"graphs-{os.getpid()}").write_text(str(counters["stats"]["unique_graphs"]))
        return reply

    return mod


def _graphs(folder: Path) -> list[int]:
    return [int(p.read_text()) for p in folder.glob("graphs-*")]


def _run(overrides: dict, folder: Path):
    folder.mkdir()
    return simulate(overrides, client=client_app(overrides, [graphs_mod(folder)]))


def _books(outcome) -> list[tuple]:
    return sorted((r.round, r.phase, r.direction, r.tensor_bytes, r.report_bytes, r.status,
                   r.objects) for r in outcome.books.rows)


def _message_bytes(outcome) -> list[int]:
    return [r.message_bytes for r in sorted(outcome.books.rows, key=lambda r: (
        r.round, r.phase, r.direction, r.tensor_bytes, r.message_bytes))]


def _exchanged(arrays) -> dict[str, tuple]:
    return {name: (tuple(a.shape), a.dtype) for name, a in arrays.items()}


@pytest.mark.slow
def test_compiled_clients_exchange_and_book_exactly_what_eager_ones_do(tmp_path):
    eager = _run({**ONE_STEP, "outputs-dir": str(tmp_path), "run-name": "eager"},
                 tmp_path / "eager-graphs")
    compiled = _run({**ONE_STEP, "compile": True, "outputs-dir": str(tmp_path),
                     "run-name": "compiled"}, tmp_path / "compiled-graphs")
    assert _graphs(tmp_path / "eager-graphs") and not any(_graphs(tmp_path / "eager-graphs"))
    assert _graphs(tmp_path / "compiled-graphs") and all(_graphs(tmp_path / "compiled-graphs"))
    assert json.loads((compiled.run_dir / CONFIG_FILE).read_text())["compile"] is True
    assert _exchanged(compiled.result.arrays) == _exchanged(eager.result.arrays)
    assert list(compiled.result.arrays) == list(eager.result.arrays)  # same order too
    assert _books(compiled) == _books(eager) and len(_books(eager)) == 4  # 2 nodes, down+up
    # Whole messages: the same but for their metadata's node and message ids, random per
    # run and varint-coded (a byte or two); their content is the same.
    assert all(abs(a - b) <= 4 for a, b in zip(_message_bytes(compiled), _message_bytes(eager),
                                                strict=True))
    assert compiled.books.mismatches == [] and eager.books.mismatches == []
    initial = compiled.initial_arrays.to_torch_state_dict()
    trained = compiled.result.arrays.to_torch_state_dict()
    assert any(not (trained[k] == initial[k]).all() for k in initial)  # it trained
    # The same first step, up to the compiled kernels' rounding.
    loss = [o.rounds[0][TRAIN_LOSS] for o in (eager, compiled)]
    assert loss[1] == pytest.approx(loss[0], rel=1e-3)
