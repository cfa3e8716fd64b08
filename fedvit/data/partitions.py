"""The datasets (embedded digits, or a hub/local dataset) and their flwr-datasets partitions.
``datasets``, ``flwr_datasets`` and scikit-learn (about 4 s a process) are imported inside
functions: a process finding its split in ``fedvit.data.loaders``' cache never imports them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from fedvit.config.appconfig import AppConfig, ConfigError
from fedvit.config.paths import EMBEDDED_DATASET, resolve_path

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from flwr_datasets.partitioner import Partitioner

# The digits split is part of the dataset's definition, not of a run: fixed forever.
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2
DIGITS_PUBLIC_FRACTION = 0.4
PREFERRED_LABELS = ("fine_label", "label")


@dataclass(frozen=True)
class Columns:
    """The ``Image`` column's name, the ``ClassLabel`` column's name, its class count."""

    image: str
    label: str
    num_classes: int


def digits_splits() -> DatasetDict:
    """scikit-learn's digits (1,797 8x8 grey images scaled to 0..255, 10 classes; columns ``image``,
    ``label``), stratified into ``train`` (40 %, clients partition it), ``test`` (20 %, the
    server's) and ``public`` (40 %, no client sees it; pretrains the backbone)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from PIL import Image as PILImage
    from sklearn.datasets import load_digits
    bunch = load_digits()
    pixels = np.clip(bunch.images * 16, 0, 255).astype(np.uint8)  # 0..16 -> 0..255
    features = Features({"image": Image(), "label": ClassLabel(names=list("0123456789"))})
    full = Dataset.from_dict({"image": [PILImage.fromarray(p, mode="L") for p in pixels],
                              "label": bunch.target.tolist()}, features=features)
    first = full.train_test_split(test_size=DIGITS_TEST_FRACTION, seed=DIGITS_SPLIT_SEED,
                                  stratify_by_column="label")
    second = first["train"].train_test_split(
        test_size=DIGITS_PUBLIC_FRACTION / (1 - DIGITS_TEST_FRACTION), seed=DIGITS_SPLIT_SEED,
        stratify_by_column="label")
    return DatasetDict(train=second["train"], public=second["test"], test=first["test"])


def columns_of(ds: Dataset) -> Columns:
    """The first ``Image`` column and the ``ClassLabel`` column (``fine_label`` or ``label``
    when there are several); ConfigError when either is missing."""
    from datasets import ClassLabel, Image
    images = [k for k, f in ds.features.items() if isinstance(f, Image)]
    labels = [k for k, f in ds.features.items() if isinstance(f, ClassLabel)]
    if not images or not labels:
        raise ConfigError(f"'dataset' has columns {dict(ds.features)}: need one Image column "
                          "and one ClassLabel column")
    label = ([k for k in PREFERRED_LABELS if k in labels] or labels)[0]
    return Columns(image=images[0], label=label, num_classes=ds.features[label].num_classes)


@lru_cache(maxsize=4)
def _partitioned(cfg: AppConfig, num_partitions: int) -> tuple[Partitioner, Dataset, Columns]:
    """The ``partitioner`` the config asks for (train split attached), the test split and
    the columns; cached per process. A hub/local dataset is shuffled with ``seed`` first."""
    from flwr_datasets import FederatedDataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner
    if cfg.dataset == EMBEDDED_DATASET:
        splits = digits_splits()
        train, test = splits["train"], splits["test"]
    else:
        path = resolve_path(cfg.dataset)
        source = str(path) if path.is_absolute() and path.is_dir() else cfg.dataset  # hub id
        try:
            fds = FederatedDataset(dataset=source, partitioners={"train": 1}, seed=cfg.seed)
            train, test = fds.load_split("train"), fds.load_split("test")
        except Exception as err:  # network, missing dataset, missing split
            raise ConfigError(f"'dataset' = {cfg.dataset!r} could not be loaded with a 'train' "
                              f"and a 'test' split ({type(err).__name__}: {err})") from err
    cols = columns_of(train)
    partitioner: Partitioner = IidPartitioner(num_partitions) if cfg.partitioner == "iid" else (
        DirichletPartitioner(num_partitions, cols.label, cfg.dirichlet_alpha, min_partition_size=0,
                             self_balancing=True, seed=cfg.seed))
    partitioner.dataset = train
    return partitioner, test, cols


def dataset_columns(cfg: AppConfig) -> Columns:
    """The configured dataset's columns; ConfigError if it cannot be loaded or lacks one."""
    return _partitioned(cfg, 1)[2]


def central_test_set(cfg: AppConfig) -> Dataset:
    """The ``test`` split the server evaluates on; raises as ``dataset_columns``."""
    return _partitioned(cfg, 1)[1]


def client_splits(cfg: AppConfig, partition_id: int, num_partitions: int) -> DatasetDict:
    """A client's partition split into ``train`` and ``val`` (``val-fraction``, seeded).
    ConfigError: a partition id outside ``[0, num_partitions)``, a partition of < 2 examples,
    a ``val-fraction`` that leaves a side empty, a dataset not loadable."""
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(f"node config 'partition-id' = {partition_id} is not allowed: must "
                          f"be in [0, {num_partitions}) for 'num-partitions' = {num_partitions}")
    part = _partitioned(cfg, num_partitions)[0].load_partition(partition_id)
    if len(part) < 2:
        raise ConfigError(f"partition {partition_id} of {num_partitions} holds {len(part)} "
                          "examples: too few to split; use fewer partitions or a larger "
                          "'dirichlet-alpha'")
    check_val_split(cfg.val_fraction, len(part), partition_id, num_partitions)
    from datasets import DatasetDict
    split = part.train_test_split(test_size=cfg.val_fraction, seed=cfg.seed)
    return DatasetDict(train=split["train"], val=split["test"])


def check_val_split(val_fraction: float, size: int, partition_id: int, num_partitions: int) -> None:
    """ConfigError when ``val-fraction`` leaves a partition of ``size`` nothing to train on:
    ``train_test_split`` validates on ``ceil(val_fraction * size)`` examples."""
    if math.ceil(val_fraction * size) < size:
        return
    raise ConfigError(
        f"'val-fraction' = {val_fraction} is not allowed: partition {partition_id} of "
        f"{num_partitions} holds {size} examples, which leaves none to train on; must be "
        f"a number in (0, 1) that leaves at least one example on each side, here at most "
        f"{math.floor(1e4 * (size - 1) / size) / 1e4}")
