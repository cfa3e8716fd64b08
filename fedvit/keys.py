"""Every key that crosses the wire or lands in an output file, named once (kebab-case, as
Flower's run config and metric names); output columns are in ``fedvit.schema``."""

from __future__ import annotations

# --------------------------------------------------------------- a message's records
METRICS = "metrics"  # the one MetricRecord of every reply
CONFIG = "config"  # the ConfigRecord of every instruction (FedAvg's)
ARRAYS = "arrays"  # the ArrayRecord of the exchanged tensors (FedAvg's ``arrayrecord_key``)
PACKED_PREFIX = "packed:"  # + JSON index: a packed ArrayRecord's one key (fedvit.wire.packing)
# ------------------------------------------------------- what an instruction's config holds
SERVER_ROUND = "server-round"  # set by FedAvg
BACKBONE = "backbone"  # FedLoRA: the frozen backbone's fingerprint the server evaluates with
# ----------------------------------------------------------------- what a reply reports
NUM_EXAMPLES = "num-examples"  # FedAvg's ``weighted_by_key``
# The node's partition: Flower's node config keys, and the reply metrics that repeat them.
PARTITION_ID, NUM_PARTITIONS = "partition-id", "num-partitions"
TRAIN_LOSS = "train-loss"
EXAMPLES_PER_S = "examples-per-s"
VAL, EVAL = "val", "eval"  # prefixes of ``<prefix>-loss``/``-accuracy``/``-examples``
LORA_AGG_ERROR_MEAN, LORA_AGG_ERROR_MAX = "lora-agg-error-mean", "lora-agg-error-max"
# The client mod's byte report: what it measured of the message in and the reply out.
BYTES_KEYS = ("bytes-down-tensor", "bytes-down-msg", "bytes-up-tensor", "bytes-up-msg")
# The node's link (node config keys, copied into every reply).
LINK_DOWN_MBPS, LINK_UP_MBPS = "link-down-mbps", "link-up-mbps"
LINK_LATENCY_MS, LINK_REAL = "link-latency-ms", "link-real"
LINK_KEYS = (LINK_DOWN_MBPS, LINK_UP_MBPS, LINK_LATENCY_MS)
# The link model's costs a projection used (``fedvit.wire.links.WireCosts``): ``phases`` columns.
WIRE_COSTS = "wire-costs"
WIRE_COST_KEYS = ("call-s", "pull-object-bytes", "push-object-bytes")
NUM_THREADS = "num-threads"  # node config: a deployment's torch threads per SuperNode

# Every ok reply's metrics: when its message passed each step (node's ``time.time()``), in order.
PROCESS_START = "t-process-start"  # the OS created the process serving it (fedvit.startup)
MOD_IN = "t-mod-in"  # the client mod received it (Flower's runtime is done with it)
HANDLER_IN = "t-handler-in"  # the handler started (after the mod's books / emulated download)
TASK_BUILT = "t-task-built"  # model and loaders exist (cached after a process's first message)
COMPUTE_START = "t-compute-start"  # the received tensors are decoded and loaded
COMPUTE_END = "t-compute-end"  # local training (and evaluation) finished
HANDLER_OUT = "t-handler-out"  # the reply's tensors are encoded
MOD_OUT = "t-mod-out"  # the mod hands the reply back (after its books / emulated upload)
STAMPS = (PROCESS_START, MOD_IN, HANDLER_IN, TASK_BUILT, COMPUTE_START, COMPUTE_END,
          HANDLER_OUT, MOD_OUT)
FRESH = "fresh-process"  # 1: the message was its process's first (start-up paid for it)
BOOKS_S = "time-books"  # the mod's byte counting, both directions
TRANSFER_S = "time-transfer"  # the mod's emulated link sleeps, both directions
# Every key the client mod adds after it measured the reply: the report's own bytes.
REPORT_KEYS = (*BYTES_KEYS, PROCESS_START, FRESH, BOOKS_S, TRANSFER_S, MOD_IN, MOD_OUT)
# Per-phase seconds of local compute reported by the handler (``time-<phase>``).
COMPUTE_PHASES = ("data", "forward", "backward", "optimizer", "eval")
TIME_TRAIN = "time-train"  # the whole of local training

# The start of a ClientApp error a run-config value caused (a run all nodes refuse stops).
CONFIG_REFUSED = "run config refused by the ClientApp:"
# ----------------------------------------------------- the rows of a round's phase table
COMPUTE_ROWS = (*COMPUTE_PHASES, "client-other")
SERVER_ROWS = ("configure", "send", "aggregation", "central-eval")
TABLE_ROWS = ("configure", "send", "pickup", "start-up", "task-build", "deserialise",
              *COMPUTE_ROWS, "serialise", "books", "transfer", "return", "aggregation",
              "central-eval", "unexplained")
KINDS = ("measured", "projected", "deployment")  # the phase table's three views
# --------------------------------------------------------------------- a run's folder
CONFIG_FILE = "config.json"
CONFIG_HISTORY = "configs.json"  # every accepted config of a run folder, with its start round
SUMMARY_FILE = "summary.json"
CHECKPOINT_STATE, CHECKPOINT_TENSORS = "checkpoint.json", "checkpoint.safetensors"
ROUNDS, BOOKS, PHASES, NODES = "rounds", "books", "phases", "nodes"  # <stem>.csv and .json
TABLES = (ROUNDS, BOOKS, PHASES, NODES)
# ------------------------------------------------------------- parameter name parts
HEAD = "head"  # timm's classifier head (trained and exchanged in full)
LORA_A, LORA_B = ".lora_A.", ".lora_B."  # peft's adapter matrices in parameter names


def time_key(phase: str) -> str:
    """The reply metric and ``nodes`` column of a compute phase's (or ``client-other``'s) s."""
    return f"time-{phase}"
