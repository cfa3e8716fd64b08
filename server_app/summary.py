"""A run's ``summary.json`` and the lines it logs. The bandwidth estimate is made before round 1;
a resume adds what its checkpoint estimated for the rounds before, so every round is estimated
under the config it ran with."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.common.logger import log

from fedvit.codecs.payload import SEP, CodecSpec, encode, encoded_bytes
from fedvit.config.appconfig import AppConfig
from fedvit.keys import SUMMARY_FILE, WIRE_COSTS
from fedvit.schema import MB, dataclass_row, field_values
from fedvit.wire.links import DEFAULT_COSTS
from server_app.grid import TooFewNodes
from server_app.timeline import NodeTimes, RoundTimes, format_table, mean_table
from strategies import Books
from strategies.failures import NodesFailed, unaggregated_rounds


class _Row:
    """A dataclass as a row (kebab-case keys: a checkpoint's, a summary's) and back."""

    def as_row(self) -> dict:
        return dataclass_row(self)

    @classmethod
    def from_row(cls, row: dict):
        return cls(**field_values(row, [f.name for f in dataclasses.fields(cls)]))


@dataclass(frozen=True)
class Estimated(_Row):
    """Tensor bytes estimated for the rounds up to ``rounds`` (a checkpoint's)."""

    rounds: int = 0
    down: int = 0
    up: int = 0
    up_min: int = 0


@dataclass(frozen=True)
class Estimate(_Row):
    """Tensor bytes the run should move: exact but for top-k (index encoding depends on the
    values: ``up_bytes_per_message`` the most a message can weigh, ``..._min`` the least);
    ``down``, ``up``, ``up_min`` include ``earlier_*`` (the rounds before a resume)."""

    down_bytes_per_message: int
    up_bytes_per_message: int
    num_nodes: int
    train_clients: int
    evaluate_clients: int
    rounds: int
    down: int
    up: int
    up_bytes_per_message_min: int
    up_min: int
    earlier_rounds: int = 0
    earlier_down: int = 0
    earlier_up: int = 0
    earlier_up_min: int = 0

    def through(self, server_round: int) -> Estimated:
        n = server_round - self.earlier_rounds
        train, down_msgs = self.train_clients, self.train_clients + self.evaluate_clients
        up_min = self.up_bytes_per_message_min
        return Estimated(server_round,
                         self.earlier_down + self.down_bytes_per_message * down_msgs * n,
                         self.earlier_up + self.up_bytes_per_message * train * n,
                         self.earlier_up_min + up_min * train * n)

    def matches(self, down: int, up: int, rounds: int | None = None) -> bool:
        """Measured tensor bytes agree with rounds 1 .. ``rounds`` (None: all): ``down``
        exactly, ``up`` exactly or, for top-k, within its range."""
        e = self.through(self.rounds if rounds is None else rounds)
        return down == e.down and e.up_min <= up <= e.up


def sampled(num_nodes: int, fraction: float, min_nodes: int) -> int:
    """How many nodes FedAvg samples: max(int(nodes x fraction), minimum); 0 if off."""
    return 0 if fraction == 0 else max(int(num_nodes * fraction), min_nodes)


def message_tensor_bytes(arrays: dict[str, np.ndarray], spec: CodecSpec) -> tuple[int, int]:
    """(least, most) tensor bytes of one message of ``arrays`` encoded with ``spec``; equal
    but for top-k, whose index part per tensor lies between ``min(k, ceil(n / 8))`` and
    ``min(4k, ceil(n / 8))`` bytes (one- or four-byte gaps, or the bitmap)."""
    if spec.name == "none":
        exact = sum(a.nbytes for a in arrays.values())
        return exact, exact
    encoded = encode(spec, arrays)
    total = encoded_bytes(encoded)
    if spec.name != "topk":
        return total, total
    least = most = total
    for key, arr in arrays.items():
        k, bitmap = encoded[f"{key}{SEP}val"].size, -(-arr.size // 8)
        sent = encoded[f"{key}{SEP}idx"].nbytes
        least += min(k, bitmap) - sent
        most += min(4 * k, bitmap) - sent
    return least, most


def estimate(arrays: dict[str, np.ndarray], num_nodes: int, cfg: AppConfig,
             earlier: Estimated | None = None) -> Estimate:
    """Train rounds send the model down and the update up to every sampled client; evaluate
    rounds (``fraction-evaluate`` > 0) the model down once more; rounds after ``earlier``
    (a resume's) with ``cfg``."""
    earlier = earlier or Estimated()
    down = message_tensor_bytes(arrays, cfg.down_codec)[1]
    up_least, up = message_tensor_bytes(arrays, cfg.up_codec)
    est = Estimate(down, up, num_nodes, sampled(num_nodes, cfg.fraction_train, cfg.min_nodes),
                   sampled(num_nodes, cfg.fraction_evaluate, cfg.min_nodes),
                   cfg.num_server_rounds, 0, 0, up_least, 0, earlier.rounds, earlier.down,
                   earlier.up, earlier.up_min)
    total = est.through(cfg.num_server_rounds)
    return dataclasses.replace(est, down=total.down, up=total.up, up_min=total.up_min)


@dataclass
class RunRecord:
    """A run's completed rounds (a resume's from its checkpoint); ``parameters``: all, trainable."""

    parameters: tuple[int, int]
    rounds: list[dict] = field(default_factory=list)
    phases: list[RoundTimes] = field(default_factory=list)
    nodes: list[NodeTimes] = field(default_factory=list)


def stop_line(summary: dict, run_dir: Path) -> str:
    """The one line a stopped run logs (and raises as ``RunStopped``)."""
    return (f"fedvit: run stopped ({summary['status']}) after rounds "
            f"{summary['completed-rounds']}: {summary['stop-reason']}; summary in "
            f"{run_dir / SUMMARY_FILE}")


class FlowerExit(BaseException):
    """Flower is ending the process (``flwr stop``, Ctrl-C, SIGTERM: its exit handlers)."""

    def __str__(self) -> str:
        return super().__str__() or "flwr stop, Ctrl-C or SIGTERM (Flower's exit handlers)"


class RunStopped(RuntimeError):
    """A run stopped before its last round; its folder holds ``summary.json``."""


def stop_status(stop: BaseException | None) -> dict[str, str]:
    """``status`` (``complete``, ``too-few-nodes``, ``nodes-failed``, ``interrupted``: Ctrl-C,
    SIGTERM, ``flwr stop``; ``failed``: any other error) and ``stop-reason``."""
    if stop is None:
        return {"status": "complete", "stop-reason": ""}
    reason = f"{type(stop).__name__}: {stop}" if str(stop) else type(stop).__name__
    if isinstance(stop, (TooFewNodes, NodesFailed)):
        status = "too-few-nodes" if isinstance(stop, TooFewNodes) else "nodes-failed"
        return {"status": status, "stop-reason": str(stop)}
    if isinstance(stop, (KeyboardInterrupt, SystemExit)) or not isinstance(stop, Exception):
        return {"status": "interrupted", "stop-reason": reason}
    return {"status": "failed", "stop-reason": reason}


def run_status(stop: BaseException | None, books: Books, rejections: list[dict]) -> dict:
    """``stop_status`` plus ``unaggregated-rounds``: a complete or nodes-failed run whose
    train rounds all aggregated nothing is ``nothing-aggregated``, a complete one with some
    such rounds ``rounds-not-aggregated``."""
    out = stop_status(stop)
    empty = unaggregated_rounds(books.rows, rejections)
    trained = {r.round for r in books.rows if r.phase == "train"}
    why = (f"rounds {empty} aggregated no update: every train reply failed, never came or "
           f"was rejected (books.csv, rejected-replies)")
    if empty and out["status"] in ("complete", "nodes-failed"):
        status = "nothing-aggregated" if set(empty) == trained else (
            "rounds-not-aggregated" if stop is None else out["status"])
        out = {"status": status, "stop-reason": out["stop-reason"] or why}
    return {**out, "unaggregated-rounds": empty}


def links(cfg: AppConfig, nodes: list[NodeTimes]) -> dict:
    """The links the projection used: the run config's, or where nodes brought their own
    ``profile`` = ``node-config`` and their mean latency; each node's under ``nodes``."""
    out = {"down-mbps": cfg.link_down_mbps, "up-mbps": cfg.link_up_mbps,
           "latency-ms": cfg.link_latency_ms, "profile": cfg.link_profile}
    own = {n.partition_id: n.link for n in nodes}
    config = (cfg.link_down_mbps, cfg.link_up_mbps, cfg.link_latency_ms)
    if cfg.link_profile == "uniform" and any(
            (k.down_mbps, k.up_mbps, k.latency_ms) != config for k in own.values()):
        out.update(profile="node-config",
                   **{"latency-ms": sum(k.latency_ms for k in own.values()) / len(own)})
    out["nodes"] = {str(pid): k.as_metrics() for pid, k in sorted(own.items())}
    return out


def build_summary(cfg: AppConfig, run: RunRecord, books: Books, rejections: list[dict],
                  est: Estimate | None, wall_s: float, stop: BaseException | None,
                  wire: dict | None) -> dict:
    """``summary.json`` (seconds float, bytes int); ``est`` None: stopped before round 1;
    ``stop`` None: complete; ``wire``: the kernel's counters against the books, or None."""
    rounds, phases, total, trainable = run.rounds, run.phases, *run.parameters
    t = books.totals()
    status = run_status(stop, books, rejections)
    steady = phases[1:] or phases
    done = [r["round"] for r in rounds]
    tensor, msg = t["down-tensor"] + t["up-tensor"], t["down-msg"] + t["up-msg"]
    costs = phases[-1].costs if phases else DEFAULT_COSTS
    return {
        "strategy": cfg.strategy, "model-name": cfg.model_name, "parameters": total,
        "trainable-parameters": trainable, "rounds": len(rounds),
        "final-central-accuracy": rounds[-1]["central-accuracy"] if rounds else None,
        "final-central-loss": rounds[-1]["central-loss"] if rounds else None,
        "wall-s": wall_s, "bytes": t, "estimate": est.as_row() if est else None,
        "estimate-matches-tensor-bytes": est.matches(t["down-tensor"], t["up-tensor"], (
            compared_rounds(done, status["unaggregated-rounds"]))) if est else None,
        "framing-overhead-percent": 100 * (msg - tensor) / tensor if tensor else None,
        "report-bytes": t["report"], "books-mismatches": books.mismatches,
        "codecs": {"down": cfg.codec_down, "up": cfg.codec_up},
        "lora-aggregation": cfg.lora_aggregation, "rejected-replies": rejections,
        "first-round-wall-s": phases[0].wall_s if phases else None,
        "steady-round-wall-s": _mean([p.wall_s for p in steady]),
        "steady-critical-compute-s": _mean([p.critical_compute_s for p in steady]),
        "steady-unexplained-max-percent": (100 * max(p.unexplained_share for p in steady)
                                           if steady else None),
        "projected-round-s": _mean([p.projected_s for p in steady]),
        "deployment-round-s": _mean([p.deployment_s for p in steady]),
        "deploy-fixed-costs": {"pickup-s": cfg.deploy_pickup_s, "startup-s": cfg.deploy_startup_s,
                               "return-s": cfg.deploy_return_s},
        WIRE_COSTS: {**costs.as_dict(), "source": costs.source},  # the last round's
        "links": links(cfg, run.nodes), "phase-table": mean_table(steady), **status,
        "completed-rounds": done, **({"wire": wire} if wire else {})}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def compared_rounds(completed: list[int], unaggregated: list[int]) -> int:
    """The last round the books hold, the estimate's to compare (an unaggregated one too)."""
    return max(completed + unaggregated, default=0)


def estimate_words(e: dict, matches: bool, rounds: int) -> str:
    """The end-of-run words for the estimate of rounds 1 .. ``rounds``; bytes too where a
    difference could hide in 3 decimals of a MB."""
    est = Estimate.from_row(e).through(rounds)
    words = "" if rounds == e["rounds"] else f"for rounds 1-{rounds} of {e['rounds']} "
    if est.up_min == est.up:
        words += f"{est.down / MB:.3f} / {est.up / MB:.3f}: " + (
            "exact match" if matches else "DIFFERENT")
    else:
        words += (f"{est.down / MB:.3f} / {est.up_min / MB:.3f} to {est.up / MB:.3f} "
                  "(top-k's index encoding depends on the values): " + (
                      "down exact, up within the range" if matches else "OUTSIDE the range"))
    return words if matches else f"{words} (estimated bytes {est.down:,} / {est.up:,})"


def log_summary(s: dict, run_dir: Path) -> None:
    b, e = s["bytes"], s["estimate"]
    log(INFO, "fedvit: finished %d rounds in %.1f s, final central accuracy %s", s["rounds"],
        s["wall-s"], f"{s['final-central-accuracy']:.4f}" if s["rounds"] else "n/a")
    if e:
        log(INFO, "fedvit: tensors measured %.3f MB down / %.3f MB up, estimated %s",
            b["down-tensor"] / MB, b["up-tensor"] / MB,
            estimate_words(e, s["estimate-matches-tensor-bytes"],
                           compared_rounds(s["completed-rounds"], s["unaggregated-rounds"])))
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
