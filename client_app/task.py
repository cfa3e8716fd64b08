"""A client's local task: its model and loaders, built once per worker process."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from torch import nn
from torch.utils.data import DataLoader

from fedvit.codecs.payload import ErrorFeedback, encode_record, record_arrays
from fedvit.config.appconfig import AppConfig, ConfigError
from fedvit.data.loaders import client_data, make_loader
from fedvit.keys import BACKBONE, NUM_PARTITIONS, NUM_THREADS, PARTITION_ID
from fedvit.model.cache import cached_model
from fedvit.model.tensors import backbone_fingerprint, input_stats
from fedvit.model.train import compile_model

EF_STATE = "error-feedback"  # context.state key of the top-k residual


@dataclass
class LocalTask:
    model: nn.Module
    train: DataLoader
    val: DataLoader


def partition_of(node_config: dict) -> tuple[int, int]:
    try:
        return int(node_config[PARTITION_ID]), int(node_config[NUM_PARTITIONS])
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"node config {dict(node_config)} is not allowed: must set integer "
                          "'partition-id' and 'num-partitions'") from err


def node_threads(node_config: dict) -> int | None:
    """The node config's ``num-threads`` (ConfigError unless an integer >= 1), or None:
    deployments give each SuperNode cores // SuperNodes, else SuperNodes sharing a host
    oversubscribe it; simulation sets none (Ray's ``OMP_NUM_THREADS`` holds)."""
    if NUM_THREADS not in node_config:
        return None
    value = node_config[NUM_THREADS]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) \
            or not str(value).isdigit() or int(value) < 1:
        raise ConfigError(f"node config '{NUM_THREADS}' = {value!r} is not allowed: must be "
                          "an integer >= 1 (torch threads of this node's ClientApp)")
    return int(value)


@lru_cache(maxsize=2)
def _model(cfg: AppConfig, num_classes: int) -> nn.Module:
    """From the model cache (a fresh process needs neither timm nor peft); ``compile``: compiled."""
    model = cached_model(cfg, num_classes)
    return compile_model(model) if cfg.compile else model


@lru_cache(maxsize=16)
def _data(cfg: AppConfig, partition_id: int, num_partitions: int
          ) -> tuple[DataLoader, DataLoader, int]:
    data = client_data(cfg, partition_id, num_partitions)
    mean, std = input_stats(_model(cfg, data.cols.num_classes))
    return (make_loader(data.train, data.cols, cfg, mean, std, shuffle=True,
                        batch_size=cfg.batch_size, seed=cfg.seed),
            make_loader(data.val, data.cols, cfg, mean, std, shuffle=False,
                        batch_size=cfg.eval_batch_size), data.cols.num_classes)


def local_task(cfg: AppConfig, partition_id: int, num_partitions: int) -> LocalTask:
    """The cached task; a worker's partitions share the model (each message loads its tensors)."""
    train, val, num_classes = _data(cfg, partition_id, num_partitions)
    return LocalTask(_model(cfg, num_classes), train, val)


def node_task(cfg: AppConfig, node_config: dict) -> tuple[LocalTask, int]:
    """This node's task and partition id; torch set to ``num-threads`` threads (ConfigError)."""
    (pid, num), threads = partition_of(node_config), node_threads(node_config)
    task = local_task(cfg, pid, num)
    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return task, pid


class BackboneMismatch(RuntimeError):
    """This client's frozen backbone differs from the server's: adapters would not fit."""


def check_backbone(task: LocalTask, config: ConfigRecord) -> None:
    """Refuse a backbone other than the server's (``fedlora`` sends its fingerprint) every
    round, so one that training changed is caught too."""
    expected = config.get(BACKBONE)
    if expected is not None and (ours := backbone_fingerprint(task.model)) != expected:
        raise BackboneMismatch(f"frozen backbone fingerprint {ours} differs from the server's "
                               f"{expected}: same 'model-name', 'img-size', 'patch-size', "
                               "'seed' and weights file needed")


def outgoing(cfg: AppConfig, local: dict[str, torch.Tensor], received: dict[str, np.ndarray],
             context: Context) -> ArrayRecord:
    """The tensors as they are (``codec-up`` none), or the update (local - received)
    encoded; top-k's error feedback keeps what was not sent in ``context.state``."""
    spec = cfg.up_codec
    if spec.name == "none":
        return ArrayRecord(local)
    update = {k: v.detach().cpu().numpy() - received[k] for k, v in local.items()}
    if spec.name != "topk":
        return encode_record(spec, update)
    stored = context.state.array_records.get(EF_STATE)
    feedback = ErrorFeedback({k: a.numpy() for k, a in (stored or {}).items()})
    compensated = feedback.compensate(update)
    record = encode_record(spec, compensated)
    feedback.update(compensated, record_arrays(record))
    context.state[EF_STATE] = ArrayRecord(
        {k: Array.from_numpy_ndarray(v) for k, v in feedback.to_arrays().items()})
    return record
