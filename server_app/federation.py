"""One federated run, as its story: build (failing before any training), start, record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from logging import INFO
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result
from flwr.supercore.exit import add_exit_handler
from torch import nn
from torch.utils.data import DataLoader

from fedvit.config.appconfig import AppConfig, raise_errors
from fedvit.config.paths import resolve_path
from fedvit.config.resume import resume_tensor_errors
from fedvit.config.resume import validate_server as validate_resume
from fedvit.data.loaders import central_test_data, make_loader
from fedvit.keys import BACKBONE
from fedvit.model.build import build_model
from fedvit.model.tensors import (
    backbone_fingerprint,
    count_parameters,
    exchanged_state,
    input_stats,
    load_exchanged,
)
from fedvit.model.train import evaluate
from fedvit.schema import MB
from server_app.grid import TimedGrid
from server_app.recorder import Checkpoint, RunRecorder, load_checkpoint, new_run_dir
from server_app.summary import Estimated, FlowerExit, RunStopped, estimate, stop_line
from server_app.timeline import NodeTimes, RoundTimes
from strategies import Books, RoundLog, build_strategy


@dataclass
class RunOutcome:
    """What a finished run leaves (also on disk in ``run_dir``)."""

    run_dir: Path
    result: Result
    books: Books
    rounds: list[dict]
    summary: dict
    initial_arrays: ArrayRecord
    phases: list[RoundTimes]
    timeline: dict[int, RoundLog]
    nodes: list[NodeTimes]


def run_federation(grid: Grid, cfg: AppConfig) -> RunOutcome:
    """Run ``cfg``'s federation on ``grid`` (``resume-from``: on from that run's checkpoint,
    in its folder); however it ends, ``summary.json`` is written. ``ConfigError``: the config
    does not fit the model or checkpoint (nothing written); ``RunStopped``: stopped early or
    rounds aggregated nothing."""
    # Build: every check of the config fails here, before anything is written.
    validate_resume(cfg)
    test_data, cols = central_test_data(cfg)
    model = build_model(cfg, cols.num_classes)
    mean, std = input_stats(model)
    test_loader = make_loader(test_data, cols, cfg, mean, std, shuffle=False,
                              batch_size=cfg.eval_batch_size)
    ckpt = load_checkpoint(resolve_path(cfg.resume_from)) if cfg.resume_from else None
    if ckpt:  # ConfigError unless its tensors fit the model
        raise_errors(resume_tensor_errors(
            cfg, {k: tuple(v.shape) for k, v in exchanged_state(model).items()},
            {k: tuple(a.shape) for k, a in ckpt.arrays.items()}))
    initial = ckpt.arrays if ckpt else ArrayRecord(exchanged_state(model))
    done = ckpt.round if ckpt else 0
    strategy = build_strategy(cfg, initial.keys())
    if ckpt:
        strategy.resume(done, ckpt.books, ckpt.rejections)
    run_dir = resolve_path(cfg.resume_from) if ckpt else new_run_dir(cfg)
    timed_grid = TimedGrid(grid, cfg.min_nodes, cfg.node_wait_s)
    recorder = RunRecorder(cfg, run_dir, strategy, timed_grid.times,
                           count_parameters(model), ckpt)
    recorder.write_config()

    def on_flower_exit() -> None:
        """`flwr stop`, Ctrl-C, SIGTERM: Flower runs exit handlers in the main thread, also
        where the ServerApp runs in another (simulation); the app's thread stops at its next
        grid call or record (``RunEnding``). Handlers are never removed: a no-op once closed."""
        recorder.close(FlowerExit())
        timed_grid.ending.set()

    add_exit_handler(on_flower_exit, run_before_force_exit=True)
    # Start: whatever stops the run from here on leaves summary.json.
    result, stop = Result(arrays=initial), None
    try:
        recorder.estimate = _log_start(cfg, model, initial, timed_grid, run_dir, ckpt)
        if cfg.num_server_rounds > done:
            # FedLoRA's clients must adapt the very backbone the server evaluates with.
            shared = ({BACKBONE: backbone_fingerprint(model)} if cfg.strategy == "fedlora"
                      else {})
            result = strategy.start(
                grid=timed_grid, initial_arrays=initial, num_rounds=cfg.num_server_rounds - done,
                timeout=cfg.round_timeout_s, train_config=ConfigRecord(shared),
                evaluate_config=ConfigRecord(shared),
                evaluate_fn=recorder.recording(central_evaluation(model, test_loader, cfg)))
        if len(result.arrays) == 0:  # no round aggregated anything: the global is unchanged
            result.arrays = initial
    except BaseException as err:  # Ctrl-C and `flwr stop` too: leave a summary
        stop = err
    # Record: the summary, and how the run ended.
    summary = recorder.close(stop)
    if summary["status"] != "complete":
        line = stop_line(summary, run_dir)
        if stop is None or isinstance(stop, Exception):
            raise RunStopped(line) from None
        raise stop  # KeyboardInterrupt, SystemExit, RunEnding: Flower's exit path
    rec = recorder.record
    return RunOutcome(run_dir, result, strategy.books, rec.rounds, summary, initial,
                      rec.phases, strategy.timeline, rec.nodes)


def _log_start(cfg: AppConfig, model, initial: ArrayRecord, grid: TimedGrid, run_dir: Path,
               ckpt: Checkpoint | None):
    """Log what runs; the bandwidth estimate (waits for ``min-nodes``: ``TooFewNodes``)."""
    num_nodes = len(grid.get_node_ids())
    earlier = Estimated.from_row(ckpt.estimated) if ckpt else None
    est = estimate({k: v.cpu().numpy() for k, v in exchanged_state(model).items()},
                   num_nodes, cfg, earlier)
    total, trainable = count_parameters(model)
    log(INFO, "fedvit: %s on %s (%s parameters, %s trainable, %d tensors exchanged, "
        "backbone %s); results in %s", cfg.strategy, cfg.model_name, f"{total:,}",
        f"{trainable:,}", len(initial), backbone_fingerprint(model), run_dir)
    log(INFO, "fedvit: estimate (model down + update up) x clients x fraction x rounds: "
        "%.3f MB down + %.3f MB up over %d rounds, %d of %d nodes training",
        est.down / MB, est.up / MB, est.rounds, est.train_clients, num_nodes)
    if ckpt:
        log(INFO, "fedvit: resuming %s after round %d", run_dir, ckpt.round)
    return est


def central_evaluation(model: nn.Module, loader: DataLoader, cfg: AppConfig
                       ) -> Callable[[int, ArrayRecord], MetricRecord]:
    """The ``evaluate_fn`` of ``Strategy.start``; it only evaluates: the exchanged tensors
    loaded into ``model`` (``ValueError`` unless ``arrays`` holds exactly those), on
    ``loader``: ``accuracy`` (0..1), ``loss`` (mean cross-entropy, nats)."""

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        load_exchanged(model, arrays.to_torch_state_dict())
        res = evaluate(model, loader, cfg.torch_device, cfg.use_bf16)
        return MetricRecord({"accuracy": res["accuracy"], "loss": res["loss"]})

    return evaluate_fn
