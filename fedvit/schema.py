"""The output schema: every file a run writes and every column or key it holds (kebab-case).
Tables (``<stem>.csv`` and ``.json``, the same rows) are checked against ``TABLES`` when
written; docs/results.md "Output files" is ``markdown()`` (a test keeps the two equal)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from fedvit import keys as k

Column = tuple[str, str]  # (name, meaning, with its unit)
MB = 1e6  # bytes: the unit of the ``*-mb`` columns, the logs and the report

ROUNDS: tuple[Column, ...] = (
    ("round", "the round (counting on across a resume)"),
    ("central-accuracy", "the global model's accuracy on the server's test split (0..1)"),
    ("central-loss", "its mean cross-entropy (nats)"),
    ("down-mb", "whole messages server → clients this round (MB = 10⁶ bytes)"),
    ("up-mb", "whole messages clients → server this round (MB)"),
    ("cumulative-mb", "both directions, every round so far (MB)"),
    ("down-tensor-bytes", "tensor bytes server → clients this round"),
    ("up-tensor-bytes", "tensor bytes clients → server this round"),
    ("down-msg-bytes", "message bytes server → clients this round"),
    ("up-msg-bytes", "message bytes clients → server this round"),
    (k.TRAIN_LOSS, "the clients' mean training loss, weighted by examples (nats)"),
    (f"{k.VAL}-accuracy", "their mean validation accuracy (`evaluate-in-train`; else empty)"),
    (k.LORA_AGG_ERROR_MEAN, "`fedlora` with `naive` aggregation: mean over adapted layers "
     "of ‖mean(B)·mean(A) − mean(B·A)‖ / ‖mean(B·A)‖ (else empty)"),
    (k.LORA_AGG_ERROR_MAX, "the same, the largest layer's"),
    ("round-s", "the round's wall time, first configure to end of central evaluation (s)"),
    ("unexplained-s", "of it, what no measured interval covers (s)"),
    ("projected-round-s", "the round projected on the links, as a simulation (s)"),
    ("deployment-round-s", "the same plus a deployment's fixed costs per message (s)"),
)

BOOKS: tuple[Column, ...] = (
    ("round", "the round"),
    ("phase", "`train`, `evaluate` or `query` (seeded sampling asking a node its partition)"),
    ("node-id", "Flower's node id"),
    ("direction", "`down` (server → client) or `up` (client → server)"),
    ("tensor-bytes", "Σ itemsize × elements of the message's arrays"),
    ("message-bytes", "the whole message as Flower ships it (every object of its tree, "
     "deflated, with its header), the client's byte report included"),
    ("report-bytes", "of `message-bytes`: the client's own byte report"),
    ("status", "`ok`, or `error` for a failed or missing reply"),
    ("detail", "for an error: the reason the node gave, or `no reply`"),
    ("objects", "objects of the message's tree (Flower 1.41 moves one per HTTP call)"),
)

_ROW = "<row>"  # a column per row of ``keys.TABLE_ROWS``
PHASES: tuple[Column, ...] = (
    ("round", "the round"),
    ("wall-s", "its wall time (s)"),
    ("critical-compute-s", "seconds of it in which some node computed"),
    ("slowest-node", "the node on the train phase's projected critical path (-1: none)"),
    ("projected-s", "the round projected on the links, as a simulation (s)"),
    ("deployment-s", "the same plus a deployment's fixed costs per message (s)"),
    *((f"{kind}-{_ROW}", f"seconds of row `{_ROW}`, {what}") for kind, what in zip(
        k.KINDS, ("measured (they add up to `wall-s`)", "projected (add up to `projected-s`)",
                  "as a deployment (add up to `deployment-s`)"), strict=True)),
    *zip(k.WIRE_COST_KEYS, ("the link model's per-call handling the projections used (s; "
                            "`fedvit.wire.links.WireCosts`)",
                            "its framing per object a node pulls (bytes)",
                            "its framing per object a node pushes (bytes)"), strict=True),
)

NODES: tuple[Column, ...] = (
    ("round", "the round"),
    ("phase", "`train` or `evaluate`"),
    ("node-id", "Flower's node id"),
    ("partition-id", "the partition the node holds"),
    ("fresh", "whether the message was the first its process served (start-up paid)"),
    ("pushed", "when the server pushed the message (server clock, s since the epoch)"),
    ("pulled", "when the server pulled the reply (server clock, s)"),
    ("books-s", "the client mod's byte counting (s)"),
    ("transfer-s", "the client mod's emulated link sleeps (s)"),
    ("down-bytes", "the message's bytes (as in the books)"),
    ("up-bytes", "the reply's bytes"),
    ("down-objects", "the message's objects"),
    ("up-objects", "the reply's objects"),
    *((stamp, "the node's timestamp (node clock, s; see `fedvit.keys`)") for stamp in k.STAMPS),
    *((k.time_key(row), f"seconds of local `{row}`") for row in k.COMPUTE_ROWS),
    (k.LINK_DOWN_MBPS, "the node's downlink (Mbit/s)"),
    (k.LINK_UP_MBPS, "its uplink (Mbit/s)"),
    (k.LINK_LATENCY_MS, "its one-way latency (ms)"),
    (k.LINK_REAL, "1 if the node really sits behind that link (node config), else 0"),
)

TABLES: dict[str, tuple[Column, ...]] = {k.ROUNDS: ROUNDS, k.BOOKS: BOOKS, k.PHASES: PHASES,
                                         k.NODES: NODES}

SUMMARY: tuple[Column, ...] = (
    ("strategy", "`fedavg` or `fedlora`"),
    ("model-name", "the timm model"),
    ("parameters", "all parameters of the model"),
    ("trainable-parameters", "the trainable ones"),
    ("rounds", "rounds completed"),
    ("final-central-accuracy", "the last round's central accuracy (0..1)"),
    ("final-central-loss", "its loss (nats)"),
    ("wall-s", "the run's wall time (s)"),
    ("bytes", "totals: `down-tensor`, `down-msg`, `up-tensor`, `up-msg`, `report` (bytes)"),
    ("estimate", "the bandwidth estimate: `down-bytes-per-message`, `up-bytes-per-message`, "
     "`num-nodes`, `train-clients`, `evaluate-clients`, `rounds`, `down`, `up` (bytes); for "
     "top-k uploads `up-bytes-per-message-min` and `up-min` (else equal); a resume's "
     "`earlier-rounds`, `earlier-down`, `earlier-up`, `earlier-up-min`: what was estimated "
     "for the rounds before it, under their configs"),
    ("estimate-matches-tensor-bytes", "whether it equals the measured tensor bytes (top-k "
     "uploads: within `up-min`..`up`)"),
    ("framing-overhead-percent", "message bytes over tensor bytes (%)"),
    ("report-bytes", "the clients' byte reports, in all"),
    ("books-mismatches", "every figure where server and client disagreed"),
    ("codecs", "`down`, `up`: the codecs"),
    ("lora-aggregation", "`naive` or `ffa`"),
    ("rejected-replies", "replies not aggregated: `round`, `node-id`, `reason`"),
    ("first-round-wall-s", "the first round's wall time (s)"),
    ("steady-round-wall-s", "the mean of the others (s)"),
    ("steady-critical-compute-s", "their mean `critical-compute-s`"),
    ("steady-unexplained-max-percent", "the largest unexplained share of a steady round (%)"),
    ("projected-round-s", "the mean steady round projected on the links (s)"),
    ("deployment-round-s", "the same as a deployment (s)"),
    ("deploy-fixed-costs", "`pickup-s`, `startup-s`, `return-s`: the run config's"),
    (k.WIRE_COSTS, "the last round's link-model costs: `call-s`, `pull-object-bytes`, "
     "`push-object-bytes` (as in `phases`) and `source` (`default`: `fedvit.wire.links`' "
     "constants; `link-lab counters, N messages`: measured from the run's own replies in "
     "the link lab, `server_app/calibration.py`)"),
    ("links", "`down-mbps`, `up-mbps`, `latency-ms`, `profile` (`node-config` where nodes "
     "brought their own) and each partition's link under `nodes`"),
    ("phase-table", "the steady rounds' mean phase table: {kind: {row: s}}"),
    ("status", "`complete`, `nothing-aggregated` (no round aggregated an update), "
     "`rounds-not-aggregated` (some did not), `nodes-failed` (every node failed a round the "
     "same way), `too-few-nodes`, `interrupted` or `failed`"),
    ("stop-reason", "why the run stopped or is not complete ('' when complete)"),
    ("unaggregated-rounds", "the train rounds that aggregated no update"),
    ("completed-rounds", "the rounds completed"),
    ("wire", "link lab only: per partition, the kernel's bytes against the books"),
)
OPTIONAL_SUMMARY = frozenset({"wire"})


def column(field_name: str) -> str:
    return field_name.replace("_", "-")


def dataclass_row(obj: Any, leave_out: Iterable[str] = ()) -> dict[str, Any]:
    """Fields under their column names, less ``leave_out`` (TypeError: not a dataclass)."""
    skip = set(leave_out)
    return {column(f.name): getattr(obj, f.name) for f in dataclasses.fields(obj)
            if f.name not in skip}


def field_values(row: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """Inverse of ``dataclass_row`` for the ``names`` whose column ``row`` holds."""
    return {name: row[column(name)] for name in names if column(name) in row}


def columns(stem: str) -> list[str]:
    """Table ``stem``'s columns, ``<row>`` expanded over ``keys.TABLE_ROWS`` (KeyError: none)."""
    return [name.replace(_ROW, row) for name, _ in TABLES[stem]
            for row in (k.TABLE_ROWS if _ROW in name else (_ROW,))]


def markdown() -> str:
    """docs/results.md's "Output files": a table per output table, then ``summary.json``'s."""
    parts = []
    for title, cols in [*((f"{stem}.csv, {stem}.json", c) for stem, c in TABLES.items()),
                        (k.SUMMARY_FILE, SUMMARY)]:
        rows = "\n".join(f"| `{name}` | {meaning} |" for name, meaning in cols)
        parts.append(f"#### {title}\n\n| column | meaning |\n|---|---|\n{rows}\n")
    return "\n".join(parts)
