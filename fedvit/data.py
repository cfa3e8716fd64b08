"""Data: the embedded digits set or a hub/local dataset -> partitions -> loaders.

Both kinds become a ``datasets.Dataset`` with an image column and a ``ClassLabel`` column
and go through the same flwr-datasets partitioners and the same transforms.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from flwr_datasets import FederatedDataset
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, Partitioner
from PIL import Image as PILImage
from torch.utils.data import DataLoader, TensorDataset
from torchvision import transforms

from fedvit.config import EMBEDDED_DATASET, AppConfig, ConfigError, resolve_path

# The digits split is part of the dataset's definition, not of a run: fixed forever.
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2
DIGITS_PUBLIC_FRACTION = 0.4
PREFERRED_LABELS = ("fine_label", "label")
MATERIALIZE_BYTES = 256 * 2**20  # below this, a split is transformed once into tensors


@dataclass(frozen=True)
class Columns:
    """Which column holds the image and which the class label."""

    image: str
    label: str
    num_classes: int


def digits_splits() -> DatasetDict:
    """scikit-learn's bundled digits (1,797 8x8 images) as a ``DatasetDict``.

    ``train`` (40 %) is what the clients partition; ``test`` (20 %) is the server's
    held-out set; ``public`` (40 %) is data the clients never see, used only to pretrain
    the frozen backbone centrally (``fedvit.pretrain``).
    """
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
    """Find the image column (``Image`` feature) and the label column (``ClassLabel``)."""
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
    """The flwr-datasets partitioner the config asks for."""
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
    path = resolve_path(dataset)
    source = str(path) if path.is_dir() else dataset
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
    """Image/label columns and class count of the configured dataset."""
    return _partitioned(cfg, 1)[2]


def central_test_set(cfg: AppConfig) -> Dataset:
    """The held-out split the server evaluates the global model on."""
    return _partitioned(cfg, 1)[1]


def client_splits(cfg: AppConfig, partition_id: int, num_partitions: int) -> DatasetDict:
    """A client's partition split into local ``train`` and ``val``."""
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
    split = part.train_test_split(test_size=cfg.val_fraction, seed=cfg.seed)
    return DatasetDict(train=split["train"], val=split["test"])


def image_transform(img_size: int, mean: tuple, std: tuple) -> transforms.Compose:
    """PIL image (any mode) -> normalised RGB tensor of ``img_size`` x ``img_size``."""
    return transforms.Compose(
        [
            transforms.Lambda(lambda im: im.convert("RGB")),
            transforms.Resize((img_size, img_size)),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def make_loader(
    ds: Dataset,
    cols: Columns,
    cfg: AppConfig,
    mean: tuple,
    std: tuple,
    shuffle: bool,
    batch_size: int,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader of ``(images, labels)``; workers and pinned memory on a GPU."""
    tf = image_transform(cfg.img_size, mean, std)
    generator = torch.Generator().manual_seed(seed)
    if len(ds) * 3 * cfg.img_size**2 * 4 <= MATERIALIZE_BYTES:
        # Small sets are transformed once, not once per epoch.
        images = torch.stack([tf(im) for im in ds[cols.image]])
        labels = torch.tensor(ds[cols.label], dtype=torch.long)
        return DataLoader(TensorDataset(images, labels), batch_size=batch_size,
                          shuffle=shuffle, generator=generator)

    def apply(batch: dict) -> dict:
        return {"image": [tf(im) for im in batch[cols.image]], "label": batch[cols.label]}

    return DataLoader(
        ds.with_transform(apply),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=min(4, os.cpu_count() or 1) if cfg.use_cuda else 0,
        pin_memory=cfg.use_cuda,
        collate_fn=_collate,
    )


def _collate(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.stack([r["image"] for r in rows]),
        torch.tensor([r["label"] for r in rows], dtype=torch.long),
    )
