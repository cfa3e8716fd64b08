"""Every stop after the run folder exists leaves summary.json naming the reason and the
completed rounds, and the ServerApp then ends with one clear error."""

from __future__ import annotations

import json
import threading

from flwr.supercore.exit import exit_handler

from server_app.grid import TooFewNodes
from server_app.summary import RunStopped, stop_status
from simulate import FAST, simulate, stopped


def _summary(out, name):
    return json.loads((out / name / "summary.json").read_text())


def test_too_few_nodes_before_round_one_leaves_a_summary(tmp_path):
    err = stopped({**FAST, "min-nodes": 3, "node-wait-s": 1.0, "outputs-dir": str(tmp_path),
                   "run-name": "few"})
    assert isinstance(err, RunStopped)
    assert "(too-few-nodes) after rounds []" in str(err) and "'min-nodes' = 3" in str(err)
    summary = _summary(tmp_path, "few")
    assert summary["status"] == "too-few-nodes"
    assert summary["completed-rounds"] == [] and summary["rounds"] == 0
    assert "2 nodes connected" in summary["stop-reason"]
    assert sorted(p.name for p in (tmp_path / "few").iterdir()) == [
        "config.json", "configs.json", "summary.json"]


class _StopAtRound:
    """The simulation's Grid, stopped as `flwr stop` stops a ServerApp when round ``at`` is
    sent: Flower's exit runs the registered exit handlers, then raises SystemExit. With
    ``main_thread``, as under `flwr run`: the handlers run in the
    process's main thread, and nothing interrupts the ServerApp's own thread."""

    def __init__(self, grid, at: int, main_thread: bool = False) -> None:
        self._grid, self._at, self._main_thread = grid, at, main_thread

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def push_messages(self, messages):
        messages = list(messages)
        if messages and int(messages[0].content["config"]["server-round"]) == self._at:
            ours = [h.exit_handler for h in exit_handler.registered_exit_handlers
                    if h.exit_handler.__name__ == "on_flower_exit"]
            if not self._main_thread:
                ours[-1]()  # this run's handler (the last one registered)
                raise SystemExit(0)
            main = threading.Thread(target=ours[-1])
            main.start()
            main.join()
        return self._grid.push_messages(messages)


def test_flwr_stop_in_round_two_leaves_round_one_and_a_summary(tmp_path):
    err = stopped({**FAST, "outputs-dir": str(tmp_path), "run-name": "stop"},
                  grid_wrapper=lambda grid: _StopAtRound(grid, 2))
    assert isinstance(err, SystemExit)  # handed on to Flower's own exit path
    summary = _summary(tmp_path, "stop")
    assert summary["status"] == "interrupted"
    assert summary["stop-reason"] == ("FlowerExit: flwr stop, Ctrl-C or SIGTERM (Flower's exit "
                                      "handlers)")
    assert summary["completed-rounds"] == [1] and summary["rounds"] == 1
    assert json.loads((tmp_path / "stop" / "checkpoint.json").read_text())["round"] == 1


def test_stop_status_names_the_reason():
    assert stop_status(None) == {"status": "complete", "stop-reason": ""}
    assert stop_status(TooFewNodes("1 nodes"))["status"] == "too-few-nodes"
    assert stop_status(SystemExit(1))["status"] == "interrupted"
    assert stop_status(KeyboardInterrupt()) == {"status": "interrupted",
                                                "stop-reason": "KeyboardInterrupt"}
    failed = stop_status(RuntimeError("evaluation broke"))
    assert failed == {"status": "failed", "stop-reason": "RuntimeError: evaluation broke"}


def _folder(run_dir) -> dict:
    """What a run folder says about its rounds: summary, tables and checkpoint."""
    read = lambda name: json.loads((run_dir / name).read_text())  # noqa: E731
    summary = read("summary.json")
    return {"summary": summary["completed-rounds"],
            "rounds": [r["round"] for r in read("rounds.json")],
            "books": sorted({r["round"] for r in read("books.json")}),
            "phases": [r["round"] for r in read("phases.json")],
            "checkpoint": read("checkpoint.json")["round"],
            "summary-bytes": summary["bytes"]["down-msg"] + summary["bytes"]["up-msg"],
            "books-bytes": sum(r["message-bytes"] for r in read("books.json"))}


def test_a_stop_from_flowers_main_thread_stops_the_run_and_it_resumes(tmp_path):
    cfg = {**FAST, "num-server-rounds": 3, "outputs-dir": str(tmp_path), "run-name": "b"}
    err = stopped(cfg, grid_wrapper=lambda grid: _StopAtRound(grid, 2, main_thread=True))
    assert not isinstance(err, Exception)  # Flower's exit path (not an app error)
    run = tmp_path / "b"
    state = _folder(run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["estimate-matches-tensor-bytes"] is True  # compared over round 1 only
    assert state == {"summary": [1], "rounds": [1], "books": [1], "phases": [1],
                     "checkpoint": 1, "summary-bytes": state["books-bytes"],
                     "books-bytes": state["books-bytes"]}
    resumed = simulate({**cfg, "resume-from": str(run)})
    assert [r["round"] for r in resumed.rounds] == [1, 2, 3]
    assert resumed.summary["status"] == "complete"
