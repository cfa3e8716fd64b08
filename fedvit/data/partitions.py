"""The datasets and their partitions: the embedded digits set or a hub/local dataset, split
among the clients by flwr-datasets.

Both kinds become a ``datasets.Dataset`` with an image column and a ``ClassLabel`` column
and go through the same flwr-datasets partitioners. ``datasets``, ``flwr_datasets`` and
scikit-learn cost about 4 s a process, so they are imported inside the functions that use
them: a process that finds its split in the partition cache (``fedvit.data.loaders``) never
imports them.
"""

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
    """Which column holds the image and which the class label.

    Args:
        image: the ``Image`` column's name.
        label: the ``ClassLabel`` column's name.
        num_classes: the label's number of classes.
    """

    image: str
    label: str
    num_classes: int


def digits_splits() -> DatasetDict:
    """scikit-learn's bundled digits (1,797 8x8 grey images, pixels scaled to 0..255).

    Returns:
        A ``DatasetDict`` (columns ``image``, ``label``: 10 classes), stratified:
        ``train`` (40 %) is what the clients partition; ``test`` (20 %) is the server's
        held-out set; ``public`` (40 %) is data the clients never see, used only to
        pretrain the frozen backbone centrally (``fedvit.model.pretrain``).
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from PIL import Image as PILImage
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.clip(bunch.images * 16, 0, 255).astype(np.uint8)  # 0..16 -> 0..255
    features = Features(
        {"image": Image(), "label": ClassLabel(names=[str(d) for d in range(10)])}
    )
    full = Dataset.from_dict(
        {"image": [PILImage.fromarray(p, mode="L") for p in pixels],
         "label": bunch.target.tolist()},
        features=features,
    )
    first = full.train_test_split(
        test_size=DIGITS_TEST_FRACTION, seed=DIGITS_SPLIT_SEED, stratify_by_column="label"
    )
    public_share = DIGITS_PUBLIC_FRACTION / (1 - DIGITS_TEST_FRACTION)
    second = first["train"].train_test_split(
        test_size=public_share, seed=DIGITS_SPLIT_SEED, stratify_by_column="label"
    )
    return DatasetDict(train=second["train"], public=second["test"], test=first["test"])


def columns_of(ds: Dataset) -> Columns:
    """Find the image column (``Image`` feature) and the label column (``ClassLabel``;
    ``fine_label`` or ``label`` when there are several).

    Args:
        ds: a dataset split.

    Returns:
        Its columns.

    Raises:
        ConfigError: no ``Image`` or no ``ClassLabel`` column.
    """
    from datasets import ClassLabel, Image

    images = [k for k, f in ds.features.items() if isinstance(f, Image)]
    labels = [k for k, f in ds.features.items() if isinstance(f, ClassLabel)]
    preferred = [k for k in PREFERRED_LABELS if k in labels]
    if not images or not labels:
        raise ConfigError(
            f"'dataset' has columns {dict(ds.features)}: need one Image column and one "
            "ClassLabel column"
        )
    label = (preferred or labels)[0]
    return Columns(image=images[0], label=label, num_classes=ds.features[label].num_classes)


def make_partitioner(cfg: AppConfig, num_partitions: int, label: str) -> Partitioner:
    """The flwr-datasets partitioner the config asks for.

    Args:
        cfg: ``partitioner``, ``dirichlet-alpha``, ``seed``.
        num_partitions: how many clients share the data.
        label: the label column (Dirichlet partitions by it).

    Returns:
        An ``IidPartitioner`` or a seeded, self-balancing ``DirichletPartitioner``
        (no dataset attached yet).
    """
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    if cfg.partitioner == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    return DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by=label,
        alpha=cfg.dirichlet_alpha,
        min_partition_size=0,
        self_balancing=True,
        seed=cfg.seed,
    )


@lru_cache(maxsize=4)
def _partitioned(cfg: AppConfig, num_partitions: int) -> tuple[Partitioner, Dataset, Columns]:
    """Partitioner (dataset attached), central test split and columns; cached per process."""
    dataset = cfg.dataset
    if dataset == EMBEDDED_DATASET:
        splits = digits_splits()
        cols = columns_of(splits["train"])
        partitioner = make_partitioner(cfg, num_partitions, cols.label)
        partitioner.dataset = splits["train"]
        return partitioner, splits["test"], cols
    from flwr_datasets import FederatedDataset

    path = resolve_path(dataset)
    source = str(path) if path.is_absolute() and path.is_dir() else dataset  # else a hub id
    try:
        probe = FederatedDataset(dataset=source, partitioners={"train": 1})
        cols = columns_of(probe.load_split("train"))
        fds = FederatedDataset(
            dataset=source,
            partitioners={"train": make_partitioner(cfg, num_partitions, cols.label)},
            seed=cfg.seed,
        )
        test = fds.load_split("test")
    except ConfigError:
        raise
    except Exception as err:  # network, missing dataset, missing split
        raise ConfigError(
            f"'dataset' = {dataset!r} could not be loaded with a 'train' and a 'test' split "
            f"({type(err).__name__}: {err})"
        ) from err
    return fds.partitioners["train"], test, cols


def dataset_columns(cfg: AppConfig) -> Columns:
    """Image/label columns and class count of the configured dataset.

    Args:
        cfg: the run config.

    Returns:
        The columns.

    Raises:
        ConfigError: the dataset cannot be loaded, or lacks an image or label column.
    """
    return _partitioned(cfg, 1)[2]


def central_test_set(cfg: AppConfig) -> Dataset:
    """The held-out split the server evaluates the global model on.

    Args:
        cfg: the run config.

    Returns:
        The dataset's ``test`` split.

    Raises:
        ConfigError: the dataset cannot be loaded, or lacks an image or label column.
    """
    return _partitioned(cfg, 1)[1]


def client_splits(cfg: AppConfig, partition_id: int, num_partitions: int) -> DatasetDict:
    """A client's partition, split into local ``train`` and ``val`` (``val-fraction``,
    seeded).

    Args:
        cfg: the run config.
        partition_id: this client's partition, in ``[0, num_partitions)``.
        num_partitions: how many clients share the data.

    Returns:
        ``DatasetDict(train=..., val=...)``.

    Raises:
        ConfigError: a partition id out of range, a partition of fewer than 2 examples,
            a ``val-fraction`` that leaves either side empty, or a dataset that cannot be
            loaded.
    """
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(
            f"node config 'partition-id' = {partition_id} is not allowed: must be in "
            f"[0, {num_partitions}) for 'num-partitions' = {num_partitions}"
        )
    partitioner = _partitioned(cfg, num_partitions)[0]
    part = partitioner.load_partition(partition_id)
    if len(part) < 2:
        raise ConfigError(
            f"partition {partition_id} of {num_partitions} holds {len(part)} examples: "
            "too few to split; use fewer partitions or a larger 'dirichlet-alpha'"
        )
    check_val_split(cfg.val_fraction, len(part), partition_id, num_partitions)
    from datasets import DatasetDict

    split = part.train_test_split(test_size=cfg.val_fraction, seed=cfg.seed)
    return DatasetDict(train=split["train"], val=split["test"])


def check_val_split(val_fraction: float, size: int, partition_id: int,
                    num_partitions: int) -> None:
    """Refuse a ``val-fraction`` that leaves a partition nothing to train on.

    The split is ``datasets.Dataset.train_test_split``'s: ``ceil(val_fraction * size)``
    examples validate, the rest train (scikit-learn's rule).

    Args:
        val_fraction: the run config's ``val-fraction``, in (0, 1).
        size: the partition's examples (>= 2).
        partition_id: the partition, for the message.
        num_partitions: how many partitions there are, for the message.

    Raises:
        ConfigError: naming the key, the value, the partition and the values that work.
    """
    if math.ceil(val_fraction * size) < size:  # at least 1 validates: val_fraction > 0
        return
    raise ConfigError(
        f"'val-fraction' = {val_fraction} is not allowed: partition {partition_id} of "
        f"{num_partitions} holds {size} examples, which leaves none to train on; must be "
        f"a number in (0, 1) that leaves at least one example on each side, here at most "
        f"{math.floor(1e4 * (size - 1) / size) / 1e4}"
    )
