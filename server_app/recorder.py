"""Recording a run: after every round its tables, its checkpoint (so ``resume-from`` can go
on) and one log line; at the end (however it ends) ``summary.json``. Nothing else in the
ServerApp writes files; each write is atomic."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from logging import ERROR, INFO
from pathlib import Path

from flwr.app import ArrayRecord, MetricRecord
from flwr.common.logger import log
from safetensors.torch import load_file, save_file

from fedvit import keys, schema
from fedvit.config.appconfig import AppConfig
from fedvit.config.paths import resolve_path
from fedvit.files import atomic_path, write_json
from fedvit.keys import CHECKPOINT_STATE, CHECKPOINT_TENSORS, CONFIG_HISTORY
from fedvit.schema import MB
from fedvit.wire.links import DEFAULT_COSTS, WireCosts
from server_app.calibration import (
    CounterSampler,
    WireCounters,
    WireSample,
    calibrate,
    samples_of,
)
from server_app.grid import GridTimes, RunEnding
from server_app.summary import (
    Estimate,
    RunRecord,
    build_summary,
    log_summary,
    stop_line,
    stop_status,
)
from server_app.timeline import FixedCosts, NodeTimes, RoundTimes, round_times
from strategies import BookRow, Books


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


def write_table(run_dir: Path, stem: str, rows: list[dict]) -> None:
    """Rewrite ``<stem>.csv`` and ``.json``; ``ValueError`` (nothing written) unless each
    row has exactly ``fedvit.schema``'s columns in order."""
    expected = schema.columns(stem)
    for row in rows:
        if list(row) != expected:
            raise ValueError(f"{stem} row {row!r} does not have the columns of "
                             f"fedvit.schema ({expected})")
    write_json(run_dir / f"{stem}.json", rows)
    if not rows:
        return
    with atomic_path(run_dir / f"{stem}.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@dataclass
class Checkpoint:
    """What a run had completed after ``round``: ``checkpoint.safetensors`` (the global
    tensors as they travel) and ``checkpoint.json`` (the rest)."""

    round: int
    arrays: ArrayRecord
    books: list[BookRow]
    rounds: list[dict]
    phases: list[dict]
    rejections: list[dict]
    nodes: list[dict]  # server_app.timeline.NodeTimes rows
    estimated: dict  # server_app.summary.Estimated through this round, as a row


def save_checkpoint(run_dir: Path, ckpt: Checkpoint) -> None:
    """Write both files atomically (tensors first, then the state that names the round)."""
    with atomic_path(run_dir / CHECKPOINT_TENSORS) as tmp:
        save_file({k: v.contiguous() for k, v in ckpt.arrays.to_torch_state_dict().items()},
                  str(tmp))
    state = {f.name: getattr(ckpt, f.name) for f in dataclasses.fields(ckpt)[2:]}
    write_json(run_dir / CHECKPOINT_STATE, {"round": ckpt.round, **state,
                                            "books": [r.as_row() for r in ckpt.books]},
               indent=None)


def load_checkpoint(run_dir: Path) -> Checkpoint:
    state = json.loads((run_dir / CHECKPOINT_STATE).read_text())
    state["books"] = [BookRow.from_row(r) for r in state["books"]]
    return Checkpoint(**state, arrays=ArrayRecord(load_file(str(run_dir / CHECKPOINT_TENSORS))))


class RunRecorder:
    """Writes a run's folder from ``strategy``'s books, timeline and rejections and logs a
    line per round; ``ckpt``: the checkpoint a resumed run goes on from, its rounds recorded."""

    def __init__(self, cfg: AppConfig, run_dir: Path, strategy, grid_times: GridTimes,
                 parameters: tuple[int, int], ckpt: Checkpoint | None) -> None:
        self.cfg, self.run_dir, self.strategy = cfg, run_dir, strategy
        self.grid_times, self.done = grid_times, ckpt.round if ckpt else 0
        self.record = RunRecord(parameters) if ckpt is None else RunRecord(
            parameters, list(ckpt.rounds), [RoundTimes.from_row(r) for r in ckpt.phases],
            [NodeTimes.from_row(r) for r in ckpt.nodes])
        self.fixed = FixedCosts(cfg.deploy_pickup_s, cfg.deploy_startup_s, cfg.deploy_return_s)
        self.estimate: Estimate | None = None
        self.wire = WireCounters.from_env()
        # In the link lab: the veths' counters sampled through the run, for wire_costs.
        self.sampler = (CounterSampler(os.getpid(), interfaces=tuple(
            self.wire.interfaces.values())).start() if self.wire else None)
        self.wire_samples: list[WireSample] = []
        self._t_start = time.perf_counter()
        self._closing = threading.RLock()  # Flower's handler may run in the round's thread
        self._summary: dict | None = None

    def write_config(self) -> None:
        """``config.json`` once; every run (a resume too) appends to ``configs.json``."""
        history_path = self.run_dir / CONFIG_HISTORY
        if self.done == 0 and not history_path.exists():
            write_json(self.run_dir / keys.CONFIG_FILE, self.cfg.to_dict())
            history = []
        else:
            history = json.loads(history_path.read_text())
        write_json(history_path, [*history, {"after-round": self.done,
                                             "config": self.cfg.to_dict()}])

    def recording(self, evaluate_fn: Callable[[int, ArrayRecord], MetricRecord]
                  ) -> Callable[[int, ArrayRecord], MetricRecord]:
        """``evaluate_fn`` timed, each round recorded after it. Flower counts this run's
        rounds from 1 (a resume's done rounds are added); round 0 is not recorded."""

        def evaluate_and_record(loop_round: int, arrays: ArrayRecord) -> MetricRecord:
            if self._summary is not None:  # stopped: no evaluation of a round not recorded
                raise RunEnding("the run was stopped: no central evaluation")
            t0 = time.time()
            metrics = evaluate_fn(loop_round + self.done, arrays)
            if loop_round > 0:
                self.round(loop_round + self.done, arrays, metrics, (t0, time.time()))
            return metrics

        return evaluate_and_record

    def round(self, server_round: int, arrays: ArrayRecord, central: MetricRecord,
              central_eval: tuple[float, float]) -> None:
        """Record a finished round (``central_eval``: (start, end), wall clock); after the
        summary: ``RunEnding``."""
        with self._closing:  # a stop's summary is written before or after, never during
            if self._summary is not None:
                raise RunEnding(f"the run was stopped: round {server_round} is not recorded")
            s, rec = self.strategy, self.record
            log_ = s.timeline[server_round]
            times, nodes = round_times(server_round, log_, s.books, self.grid_times,
                                       central_eval, self.fixed,
                                       lambda nodes: self.wire_costs(server_round, nodes))
            rec.phases.append(times)
            rec.nodes.extend(nodes)
            row = round_row(server_round, central, s.books, times, log_.train_metrics)
            rec.rounds.append(row)
            phases, node_rows = [p.as_row() for p in rec.phases], [n.as_row() for n in rec.nodes]
            for stem, rows in ((keys.ROUNDS, rec.rounds), (keys.BOOKS, s.books.as_rows()),
                               (keys.PHASES, phases), (keys.NODES, node_rows)):
                write_table(self.run_dir, stem, rows)
            save_checkpoint(self.run_dir, Checkpoint(
                server_round, arrays, s.books.rows, rec.rounds, phases, s.rejections,
                node_rows, self.estimate.through(server_round).as_row()))
            log(INFO, "fedvit: round %d/%d | central acc %.4f loss %.4f | down %.3f MB "
                "up %.3f MB | cumulative %.3f MB | %.1f s (%.0f %% unexplained), projected "
                "%.1f s on the links, %.1f s as a deployment",
                server_round, self.cfg.num_server_rounds, central["accuracy"],
                central["loss"], row["down-mb"], row["up-mb"], row["cumulative-mb"],
                row["round-s"], 100 * times.unexplained_share, row["projected-round-s"],
                row["deployment-round-s"])

    def wire_costs(self, server_round: int, nodes: list[NodeTimes]) -> WireCosts:
        """This round's link costs: in the link lab measured from the counters over the
        run's replies so far (``calibration``), else ``DEFAULT_COSTS``."""
        if self.sampler is None:
            return DEFAULT_COSTS
        push_starts = {end: start for start, end in
                       self.grid_times.pushes.get(server_round, [])}
        self.wire_samples += samples_of(nodes, self.sampler, self.wire.interfaces,
                                        self.wire.link_history(), push_starts)
        self.sampler.forget_before(time.time())  # later rounds' windows start after now
        return calibrate(self.wire_samples)

    def close(self, stop: BaseException | None) -> dict:
        """Write, log and return ``summary.json``, once (the run's thread or Flower's exit
        handler, first wins); ``stop``: what ended the run (None: complete)."""
        with self._closing:
            if self._summary is None:
                if self.sampler is not None:
                    self.sampler.stop()
                s = self.strategy
                wire = self.wire.versus_books(s.books, self.record.nodes) if self.wire else None
                books = s.books
                if stop_status(stop)["status"] == "interrupted":
                    # Flower ended the run: the recorded rounds' books, not a cut round's.
                    last = self.record.rounds[-1]["round"] if self.record.rounds else 0
                    books = Books([r for r in books.rows if r.round <= last], books.mismatches)
                elif s.books.rows:  # a failed round's rows (its nodes' errors) are shown too
                    write_table(self.run_dir, keys.BOOKS, s.books.as_rows())
                summary = build_summary(self.cfg, self.record, books, s.rejections,
                                        self.estimate, time.perf_counter() - self._t_start,
                                        stop, wire)
                write_json(self.run_dir / keys.SUMMARY_FILE, summary)
                log_summary(summary, self.run_dir)
                if stop is not None:
                    log(ERROR, "%s", stop_line(summary, self.run_dir))
                self._summary = summary
            return self._summary


def round_row(server_round: int, central: MetricRecord, books, times: RoundTimes,
              train: dict[str, float]) -> dict:
    """One row of ``rounds.csv`` (``fedvit.schema.ROUNDS``)."""
    this, cum = books.totals(server_round), books.totals(server_round, upto=True)
    return {
        "round": server_round, "central-accuracy": central["accuracy"],
        "central-loss": central["loss"], "down-mb": this["down-msg"] / MB,
        "up-mb": this["up-msg"] / MB, "cumulative-mb": (cum["down-msg"] + cum["up-msg"]) / MB,
        "down-tensor-bytes": this["down-tensor"], "up-tensor-bytes": this["up-tensor"],
        "down-msg-bytes": this["down-msg"], "up-msg-bytes": this["up-msg"],
        **{key: train.get(key) for key in (keys.TRAIN_LOSS, f"{keys.VAL}-accuracy",
                                           keys.LORA_AGG_ERROR_MEAN, keys.LORA_AGG_ERROR_MAX)},
        "round-s": times.wall_s, "unexplained-s": times.measured["unexplained"],
        "projected-round-s": times.projected_s, "deployment-round-s": times.deployment_s}
