"""The ClientApp: local training and evaluation of the exchanged tensors."""

from __future__ import annotations

import time

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client_app.mods import WIRE_MODS
from client_app.task import LocalTask, check_backbone, node_task, outgoing, partition_of
from fedvit import keys
from fedvit.codecs.payload import record_arrays
from fedvit.config.appconfig import AppConfig, ConfigError
from fedvit.keys import COMPUTE_END, COMPUTE_START, HANDLER_IN, HANDLER_OUT, METRICS, TASK_BUILT
from fedvit.model.tensors import exchanged_state, load_exchanged
from fedvit.model.train import evaluate as evaluate_loader
from fedvit.model.train import make_optimizer, train_epochs
from fedvit.wire.links import node_link

app = ClientApp(mods=list(WIRE_MODS))


@app.train()
def train(msg: Message, context: Context) -> Message:
    stamps = {HANDLER_IN: time.time()}
    cfg, task, pid, received, optimizer = _prepare(msg, context, stamps, train=True)
    val = _val_metrics(cfg, task, prefix=keys.VAL) if cfg.evaluate_in_train else {}
    server_round = int(msg.content[keys.CONFIG][keys.SERVER_ROUND])
    torch.manual_seed(cfg.seed + 1000 * server_round + pid)
    task.train.generator.manual_seed(cfg.seed + server_round)  # same order on a resume
    stats = train_epochs(task.model, task.train, cfg.local_epochs, cfg.learning_rate,
                         cfg.torch_device, cfg.use_bf16, optimizer=optimizer)
    metrics = {keys.NUM_EXAMPLES: stats.num_examples, keys.TRAIN_LOSS: stats.loss,
               keys.TIME_TRAIN: stats.wall_s, keys.EXAMPLES_PER_S: stats.examples_per_s,
               **{keys.time_key(phase): s for phase, s in stats.phases.items()}, **val}
    stamps[COMPUTE_END] = time.time()
    arrays = outgoing(cfg, exchanged_state(task.model), received, context)
    return _reply(msg, context, cfg, pid, stamps, metrics, arrays)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    stamps = {HANDLER_IN: time.time()}
    cfg, task, pid, _, _ = _prepare(msg, context, stamps)
    metrics = _val_metrics(cfg, task, prefix=keys.EVAL)
    metrics[keys.NUM_EXAMPLES] = metrics.pop(f"{keys.EVAL}-examples")
    stamps[COMPUTE_END] = time.time()
    return _reply(msg, context, cfg, pid, stamps, metrics)


def _prepare(
    msg: Message, context: Context, stamps: dict[str, float], train: bool = False
) -> tuple[AppConfig, LocalTask, int, dict[str, np.ndarray], torch.optim.Optimizer | None]:
    """The task, received tensors loaded; for ``train`` in train mode (a cached model loads its
    program then: task build), a fresh AdamW. A refused config: ConfigError ``CONFIG_REFUSED``."""
    try:
        cfg = AppConfig.from_run_config(context.run_config)
        task, pid = node_task(cfg, context.node_config)
    except ConfigError as err:  # marked, so the server knows a config the nodes refuse
        raise ConfigError(f"{keys.CONFIG_REFUSED} {err}") from err
    optimizer = (make_optimizer(task.model.to(cfg.torch_device).train(), cfg.learning_rate)
                 if train else None)
    stamps[TASK_BUILT] = time.time()
    check_backbone(task, msg.content[keys.CONFIG])
    received = record_arrays(msg.content[keys.ARRAYS])
    load_exchanged(task.model, {k: torch.from_numpy(v) for k, v in received.items()})
    stamps[COMPUTE_START] = time.time()
    return cfg, task, pid, received, optimizer


def _val_metrics(cfg: AppConfig, task: LocalTask, prefix: str) -> dict:
    t0 = time.perf_counter()
    res = evaluate_loader(task.model, task.val, cfg.torch_device, cfg.use_bf16)
    return {f"{prefix}-loss": res["loss"], f"{prefix}-accuracy": res["accuracy"],
            f"{prefix}-examples": res["num-examples"],
            keys.time_key("eval"): time.perf_counter() - t0}


def _reply(msg: Message, context: Context, cfg: AppConfig, pid: int, stamps: dict[str, float],
           metrics: dict, arrays: ArrayRecord | None = None) -> Message:
    metrics.setdefault(keys.time_key("eval"), 0.0)
    metrics.update(node_link(cfg, context.node_config, pid).as_metrics())
    metrics.update({keys.PARTITION_ID: pid, **stamps, HANDLER_OUT: time.time()})
    content = {METRICS: MetricRecord(metrics), **({} if arrays is None else {keys.ARRAYS: arrays})}
    return Message(content=RecordDict(content), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (for seeded sampling)."""
    pid, num = partition_of(context.node_config)
    metrics = MetricRecord({keys.PARTITION_ID: pid, keys.NUM_PARTITIONS: num})
    return Message(content=RecordDict({METRICS: metrics}), reply_to=msg)
