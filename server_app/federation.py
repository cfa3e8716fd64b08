"""One federated run: config -> model -> strategy -> start -> results."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from logging import ERROR, INFO, WARNING
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result
from flwr.supercore.exit import add_exit_handler

from fedvit.config import AppConfig, raise_errors
from fedvit.data import central_test_data, make_loader
from fedvit.model import (
    backbone_fingerprint,
    build_model,
    count_parameters,
    exchanged_state,
    input_stats,
    load_exchanged,
)
from fedvit.paths import resolve_path
from fedvit.resume import CONFIG_HISTORY, resume_tensor_errors, run_config_of, validate_server
from fedvit.train import evaluate
from server_app.checkpoint import Checkpoint
from server_app.checkpoint import load as load_checkpoint
from server_app.checkpoint import save as save_checkpoint
from server_app.estimate import Estimate, estimate
from server_app.grid import TimedGrid, TooFewNodes
from server_app.results import ResultsWriter, new_run_dir
from server_app.timeline import (
    FixedCosts,
    NodeTimes,
    RoundTimes,
    format_table,
    mean_table,
    round_times,
)
from server_app.wire_truth import WireCounters
from strategies import Books, RoundLog, make_strategy

MB = 1e6
# Aggregated train metrics copied into rounds.csv (None where a run has none).
ROUND_TRAIN_METRICS = ("train-loss", "val-accuracy", "lora-agg-error-mean",
                       "lora-agg-error-max")


@dataclass
class RunOutcome:
    """What a finished run leaves: its folder, Flower's Result, the books, the rows."""

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
    """Build everything (failing before any training), run the strategy, write results.

    With ``resume-from``, start from that run's checkpoint and go on in its folder.
    """
    t_start = time.perf_counter()
    validate_server(cfg)  # resume-from against its checkpoint, before anything is written
    test_data, cols = central_test_data(cfg)
    model = build_model(cfg, cols.num_classes)
    mean, std = input_stats(model)
    test_loader = make_loader(test_data, cols, cfg, mean, std, shuffle=False,
                              batch_size=cfg.eval_batch_size)
    resume = load_checkpoint(resolve_path(cfg.resume_from)) if cfg.resume_from else None
    if resume:
        raise_errors(resume_tensor_errors(
            cfg, {k: tuple(v.shape) for k, v in exchanged_state(model).items()},
            {k: tuple(a.shape) for k, a in resume.arrays.items()}))
    initial = resume.arrays if resume else ArrayRecord(exchanged_state(model))
    strategy = make_strategy(cfg, initial.keys())
    done = resume.round if resume else 0
    strategy.round_offset = done
    rounds: list[dict] = list(resume.rounds) if resume else []
    phases = [RoundTimes.from_row(r) for r in resume.phases] if resume else []
    nodes = [NodeTimes.from_row(r) for r in resume.nodes] if resume else []
    fixed = FixedCosts(cfg.deploy_pickup_s, cfg.deploy_startup_s, cfg.deploy_return_s)
    if resume:
        strategy.books.rows = list(resume.books)
        strategy.rejections = list(resume.rejections)

    run_dir = resolve_path(cfg.resume_from) if resume else new_run_dir(cfg)
    writer = ResultsWriter(run_dir)
    total, trainable = count_parameters(model)
    _record_config(writer, cfg, done)
    timed_grid = TimedGrid(grid, cfg.min_nodes, cfg.node_wait_s)
    est: Estimate | None = None

    wire = WireCounters.from_env()

    def central_evaluate(loop_round: int, arrays: ArrayRecord) -> MetricRecord:
        t0 = time.time()
        load_exchanged(model, arrays.to_torch_state_dict())
        res = evaluate(model, test_loader, cfg.torch_device, cfg.use_bf16)
        if loop_round > 0:
            server_round = loop_round + done
            log_ = strategy.timeline[server_round]
            times, round_nodes = round_times(server_round, log_, strategy.books,
                                             timed_grid.times, (t0, time.time()), fixed)
            phases.append(times)
            nodes.extend(round_nodes)
            row = _round_row(server_round, res, strategy.books, times, log_.train_metrics)
            rounds.append(row)
            writer.write_table("rounds", rounds)
            writer.write_table("books", strategy.books.as_dicts())
            writer.write_table("phases", [p.as_row() for p in phases])
            writer.write_table("nodes", [n.as_row() for n in nodes])
            save_checkpoint(run_dir, Checkpoint(
                server_round, arrays, strategy.books.rows, rounds,
                [p.as_row() for p in phases], strategy.rejections,
                [n.as_row() for n in nodes]))
            log(INFO, "fedvit: round %d/%d | central acc %.4f loss %.4f | down %.3f MB "
                "up %.3f MB | cumulative %.3f MB | %.1f s (%.0f %% unexplained), projected "
                "%.1f s on the links, %.1f s as a deployment",
                server_round, cfg.num_server_rounds, res["accuracy"], res["loss"],
                row["down-mb"], row["up-mb"], row["cumulative-mb"], row["round-s"],
                100 * times.unexplained_share, row["projected-round-s"],
                row["deployment-round-s"])
        return MetricRecord({"accuracy": res["accuracy"], "loss": res["loss"]})

    # FedLoRA's clients must adapt the very backbone the server evaluates with.
    shared = {"backbone": backbone_fingerprint(model)} if cfg.strategy == "fedlora" else {}
    result, stop = Result(arrays=initial), None
    closing = threading.Lock()
    closed: list[dict] = []  # the summary, once written

    def close(stop: BaseException | None) -> dict:
        """Write summary.json once (the first stop seen wins) and log it."""
        with closing:
            if not closed:
                summary = _summary(cfg, rounds, strategy.books, est, total, trainable,
                                   time.perf_counter() - t_start, phases, strategy.rejections)
                summary.update(stop_status(stop))
                summary["completed-rounds"] = [r["round"] for r in rounds]
                summary["links"] = _links(cfg, nodes)
                if wire:
                    summary["wire"] = wire.versus_books(strategy.books, nodes)
                writer.write_json("summary.json", summary)
                _log_summary(summary, run_dir)
                if stop is not None:
                    log(ERROR, "%s", _stop_line(summary, run_dir))
                closed.append(summary)
                pending.clear()
            return closed[0]

    # `flwr stop`, Ctrl-C, SIGTERM: Flower's exit runs its handlers in the main thread, also
    # where the ServerApp runs in another (simulation); the summary is written there. The
    # handler lets go of the run once the summary is written (handlers are never removed).
    pending = [close]

    def on_flower_exit() -> None:
        if pending:
            pending[0](FlowerExit())

    add_exit_handler(on_flower_exit, run_before_force_exit=True)
    try:  # from here on, whatever stops the run leaves summary.json
        num_nodes = len(timed_grid.get_node_ids())
        est = estimate({k: v.cpu().numpy() for k, v in exchanged_state(model).items()},
                       num_nodes, cfg)
        log(INFO, "fedvit: %s on %s (%s parameters, %s trainable, %d tensors exchanged, "
            "backbone %s); results in %s", cfg.strategy, cfg.model_name, f"{total:,}",
            f"{trainable:,}", len(initial), backbone_fingerprint(model), run_dir)
        log(INFO, "fedvit: estimate (model down + update up) x clients x fraction x rounds: "
            "%.3f MB down + %.3f MB up over %d rounds, %d of %d nodes training",
            est.down / MB, est.up / MB, est.rounds, est.train_clients, num_nodes)
        if resume:
            log(INFO, "fedvit: resuming %s after round %d", run_dir, done)
        if cfg.num_server_rounds > done:
            result = strategy.start(
                grid=timed_grid,
                initial_arrays=initial,
                num_rounds=cfg.num_server_rounds - done,
                timeout=cfg.round_timeout_s,
                train_config=ConfigRecord(shared),
                evaluate_config=ConfigRecord(shared),
                evaluate_fn=central_evaluate,
            )
        if len(result.arrays) == 0:  # no round aggregated anything: the global is unchanged
            result.arrays = initial
    except BaseException as err:  # Ctrl-C and `flwr stop` too: leave a summary
        stop = err
    summary = close(stop)
    if summary["status"] != "complete":
        line = _stop_line(summary, run_dir)
        if isinstance(stop, Exception):
            raise RunStopped(line) from None
        raise stop or FlowerExit(line)  # KeyboardInterrupt, SystemExit: Flower's exit path
    return RunOutcome(run_dir, result, strategy.books, rounds, summary, initial, phases,
                      strategy.timeline, nodes)


def _record_config(writer: ResultsWriter, cfg: AppConfig, done: int) -> None:
    """A new run writes ``config.json``; every run, resumed or not, appends its config to
    ``configs.json`` (``after-round``: the rounds completed before it started). A resume
    never rewrites an earlier config."""
    history_path = writer.run_dir / CONFIG_HISTORY
    if done == 0 and not history_path.exists():
        writer.write_json("config.json", cfg.to_dict())
        history = []
    elif history_path.exists():
        history = json.loads(history_path.read_text())
    else:  # a folder written before configs.json existed
        history = [{"after-round": 0, "config": run_config_of(writer.run_dir)}]
    writer.write_json(CONFIG_HISTORY, [*history, {"after-round": done,
                                                  "config": cfg.to_dict()}])


def _stop_line(summary: dict, run_dir: Path) -> str:
    return (f"fedvit: run stopped ({summary['status']}) after rounds "
            f"{summary['completed-rounds']}: {summary['stop-reason']}; summary in "
            f"{run_dir / 'summary.json'}")


class FlowerExit(BaseException):
    """Flower is ending the process (``flwr stop``, Ctrl-C, SIGTERM: its exit handlers)."""

    def __str__(self) -> str:
        return super().__str__() or "flwr stop, Ctrl-C or SIGTERM (Flower's exit handlers)"


class RunStopped(RuntimeError):
    """A run stopped before its last round; its folder holds ``summary.json``."""


def stop_status(stop: BaseException | None) -> dict[str, str]:
    """``status`` and ``stop-reason`` of a run that ended with ``stop`` (None: finished).

    ``status`` is ``complete``, ``too-few-nodes``, ``interrupted`` (Ctrl-C, SIGTERM,
    ``flwr stop``) or ``failed`` (any other error, e.g. inside an evaluation).
    """
    if stop is None:
        return {"status": "complete", "stop-reason": ""}
    reason = f"{type(stop).__name__}: {stop}" if str(stop) else type(stop).__name__
    if isinstance(stop, TooFewNodes):
        return {"status": "too-few-nodes", "stop-reason": str(stop)}
    if isinstance(stop, (KeyboardInterrupt, SystemExit)) or not isinstance(stop, Exception):
        return {"status": "interrupted", "stop-reason": reason}
    return {"status": "failed", "stop-reason": reason}


def _round_row(server_round: int, res: dict, books: Books, times: RoundTimes,
               train: dict[str, float]) -> dict:
    this, cum = books.totals(server_round), books.totals(server_round, upto=True)
    return {
        "round": server_round,
        "central-accuracy": res["accuracy"],
        "central-loss": res["loss"],
        "down-mb": this["down-msg"] / MB,
        "up-mb": this["up-msg"] / MB,
        "cumulative-mb": (cum["down-msg"] + cum["up-msg"]) / MB,
        "down-tensor-bytes": this["down-tensor"],
        "up-tensor-bytes": this["up-tensor"],
        "down-msg-bytes": this["down-msg"],
        "up-msg-bytes": this["up-msg"],
        **{key: train.get(key) for key in ROUND_TRAIN_METRICS},
        "round-s": times.wall_s,
        "unexplained-s": times.measured["unexplained"],
        "projected-round-s": times.projected_s,
        "deployment-round-s": times.deployment_s,
    }


def _links(cfg: AppConfig, nodes: list[NodeTimes]) -> dict:
    """The links the run's projection used: the run config's, unless nodes brought their
    own (node config: a deployment, the link lab), then ``profile`` = ``node-config``, the
    latency their mean, and each node's link under ``nodes`` (by partition)."""
    links = {"down-mbps": cfg.link_down_mbps, "up-mbps": cfg.link_up_mbps,
             "latency-ms": cfg.link_latency_ms, "profile": cfg.link_profile}
    own = {n.partition_id: n.link for n in nodes}
    config = (cfg.link_down_mbps, cfg.link_up_mbps, cfg.link_latency_ms)
    if cfg.link_profile == "uniform" and any(
            (k.down_mbps, k.up_mbps, k.latency_ms) != config for k in own.values()):
        links.update(profile="node-config",
                     **{"latency-ms": sum(k.latency_ms for k in own.values()) / len(own)})
    links["nodes"] = {str(pid): k.as_metrics() for pid, k in sorted(own.items())}
    return links


def _summary(cfg: AppConfig, rounds: list[dict], books: Books, est: Estimate | None,
             total: int,
             trainable: int, wall_s: float, phases: list[RoundTimes],
             rejections: list[dict]) -> dict:
    t = books.totals()
    steady = phases[1:] or phases
    tensor, msg = t["down-tensor"] + t["up-tensor"], t["down-msg"] + t["up-msg"]
    return {
        "strategy": cfg.strategy,
        "model-name": cfg.model_name,
        "parameters": total,
        "trainable-parameters": trainable,
        "rounds": len(rounds),
        "final-central-accuracy": rounds[-1]["central-accuracy"] if rounds else None,
        "final-central-loss": rounds[-1]["central-loss"] if rounds else None,
        "wall-s": wall_s,
        "bytes": t,
        "estimate": est.as_dict() if est else None,
        "estimate-matches-tensor-bytes": (est.down, est.up) == (t["down-tensor"],
                                                               t["up-tensor"]) if est else None,
        "framing-overhead-percent": 100 * (msg - tensor) / tensor if tensor else None,
        "report-bytes": t["report"],
        "books-mismatches": books.mismatches,
        "codecs": {"down": cfg.codec_down, "up": cfg.codec_up},
        "lora-aggregation": cfg.lora_aggregation,
        "rejected-replies": rejections,
        "first-round-wall-s": phases[0].wall_s if phases else None,
        "steady-round-wall-s": _mean([p.wall_s for p in steady]),
        "steady-critical-compute-s": _mean([p.critical_compute_s for p in steady]),
        "steady-unexplained-max-percent": (100 * max(p.unexplained_share for p in steady)
                                           if steady else None),
        "projected-round-s": _mean([p.projected_s for p in steady]),
        "deployment-round-s": _mean([p.deployment_s for p in steady]),
        "deploy-fixed-costs": {"pickup-s": cfg.deploy_pickup_s,
                               "startup-s": cfg.deploy_startup_s,
                               "return-s": cfg.deploy_return_s},
        "links": {"down-mbps": cfg.link_down_mbps, "up-mbps": cfg.link_up_mbps,
                  "latency-ms": cfg.link_latency_ms, "profile": cfg.link_profile},
        "phase-table": mean_table(steady),
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _log_summary(s: dict, run_dir: Path) -> None:
    b, e = s["bytes"], s["estimate"]
    log(INFO, "fedvit: finished %d rounds in %.1f s, final central accuracy %s", s["rounds"],
        s["wall-s"], f"{s['final-central-accuracy']:.4f}" if s["rounds"] else "n/a")
    if e:
        log(INFO, "fedvit: tensors measured %.3f MB down / %.3f MB up, estimated %.3f / "
            "%.3f: %s", b["down-tensor"] / MB, b["up-tensor"] / MB, e["down"] / MB,
            e["up"] / MB, "exact match" if s["estimate-matches-tensor-bytes"] else "DIFFERENT")
    log(INFO, "fedvit: whole messages %.3f MB down / %.3f MB up; framing overhead %.3f %%",
        b["down-msg"] / MB, b["up-msg"] / MB, s["framing-overhead-percent"] or 0.0)
    for pid, w in (s.get("wire") or {}).items():
        log(INFO, "fedvit: link of partition %s, kernel bytes / books bytes: down %s / %s, "
            "up %s / %s", pid, f"{w['down-wire-bytes']:,}", f"{w['down-books-bytes']:,}",
            f"{w['up-wire-bytes']:,}", f"{w['up-books-bytes']:,}")
    if s["books-mismatches"]:
        log(WARNING, "fedvit: %d books mismatches (see summary.json)",
            len(s["books-mismatches"]))
    if s["rounds"]:
        log(INFO, "fedvit: where a round's time goes (mean of rounds %s; first round %.1f s):"
            "\n%s", "2.." + str(s["rounds"]) if s["rounds"] > 1 else "1",
            s["first-round-wall-s"], format_table({s["strategy"]: s["phase-table"]}))
    log(INFO, "fedvit: results written to %s", run_dir)
