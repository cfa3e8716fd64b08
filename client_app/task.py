"""A client's local task: its model and loaders, built once per worker process."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from flwr.app import ConfigRecord
from torch import nn
from torch.utils.data import DataLoader

from fedvit.config import AppConfig, ConfigError
from fedvit.data import client_splits, dataset_columns, make_loader
from fedvit.model import backbone_fingerprint, build_model, input_stats


@dataclass
class LocalTask:
    """Model plus the client's local train and validation loaders."""

    model: nn.Module
    train: DataLoader
    val: DataLoader


def partition_of(node_config: dict) -> tuple[int, int]:
    """(partition-id, num-partitions) from the node config, validated."""
    try:
        return int(node_config["partition-id"]), int(node_config["num-partitions"])
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(
            f"node config {dict(node_config)} is not allowed: must set integer "
            "'partition-id' and 'num-partitions'"
        ) from err


@lru_cache(maxsize=2)
def _model(cfg: AppConfig, num_classes: int) -> nn.Module:
    return build_model(cfg, num_classes)


@lru_cache(maxsize=16)
def _loaders(cfg: AppConfig, partition_id: int, num_partitions: int) -> tuple:
    cols = dataset_columns(cfg)
    splits = client_splits(cfg, partition_id, num_partitions)
    mean, std = input_stats(_model(cfg, cols.num_classes))
    return (
        make_loader(splits["train"], cols, cfg, mean, std, shuffle=True, seed=cfg.seed),
        make_loader(splits["val"], cols, cfg, mean, std, shuffle=False),
    )


def local_task(cfg: AppConfig, partition_id: int, num_partitions: int) -> LocalTask:
    """The cached task of this partition. The model is shared by the partitions a worker
    serves; every message loads the exchanged tensors into it before use."""
    train, val = _loaders(cfg, partition_id, num_partitions)
    return LocalTask(_model(cfg, dataset_columns(cfg).num_classes), train, val)


class BackboneMismatch(RuntimeError):
    """This client's frozen backbone differs from the server's: adapters would not fit."""


def check_backbone(task: LocalTask, config: ConfigRecord) -> None:
    """Refuse to work on a backbone other than the server's (``fedlora`` sends its
    fingerprint in the config). Checked every round, so a backbone that training changed
    would be caught too."""
    expected = config.get("backbone")
    if expected is None:
        return
    ours = backbone_fingerprint(task.model)
    if ours != expected:
        raise BackboneMismatch(
            f"frozen backbone fingerprint {ours} differs from the server's {expected}: "
            "same 'model-name', 'img-size', 'patch-size', 'seed' and weights file needed"
        )
