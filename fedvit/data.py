"""Data: the embedded digits set or a hub/local dataset -> partitions -> loaders.

Both kinds become a ``datasets.Dataset`` with an image column and a ``ClassLabel`` column
and go through the same flwr-datasets partitioners and the same transforms.

A client's partition of a small dataset (digits, or a local folder), and the server's test
split, are materialised once into ``uint8`` tensors and cached under
``$FEDVIT_CACHE/partitions``. A process that finds its split there never imports
``datasets`` or ``flwr_datasets``, which cost about 4 s a process (and in deployment Flower
1.41 starts a ClientApp process per message); that is why those two, and torchvision (about
1.3 s with the ``torch._dynamo`` its ``ops`` import), are imported inside the functions that
use them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedvit.config import AppConfig, ConfigError
from fedvit.files import atomic_path
from fedvit.paths import EMBEDDED_DATASET, cache_dir, resolve_path

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from flwr_datasets.partitioner import Partitioner
    from torchvision import transforms

# The digits split is part of the dataset's definition, not of a run: fixed forever.
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2
DIGITS_PUBLIC_FRACTION = 0.4
PREFERRED_LABELS = ("fine_label", "label")
MATERIALIZE_BYTES = 256 * 2**20  # below this, a split is transformed once into tensors
PARTITION_CACHE_VERSION = 1  # bump when what a cached partition holds changes


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
    """Find the image column (``Image`` feature) and the label column (``ClassLabel``)."""
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
    """The flwr-datasets partitioner the config asks for."""
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
    from datasets import DatasetDict

    split = part.train_test_split(test_size=cfg.val_fraction, seed=cfg.seed)
    return DatasetDict(train=split["train"], val=split["test"])


def fits_in_memory(num_examples: int, img_size: int) -> bool:
    """Whether a split is small enough to be transformed once into float tensors."""
    return num_examples * 3 * img_size**2 * 4 <= MATERIALIZE_BYTES


@dataclass(frozen=True)
class Materialised:
    """A split as tensors: ``uint8`` RGB images ``(N, 3, S, S)`` and ``int64`` labels."""

    images: torch.Tensor
    labels: torch.Tensor


def pixels(img_size: int) -> transforms.Compose:
    """PIL image (any mode) -> ``uint8`` RGB tensor of ``img_size`` x ``img_size``."""
    from torchvision import transforms  # not imported by a process that finds its cache

    return transforms.Compose([
        transforms.Lambda(lambda im: im.convert("RGB")),
        transforms.Resize((img_size, img_size)),
        transforms.PILToTensor(),
    ])


def materialise(ds: Dataset, cols: Columns, img_size: int) -> Materialised:
    """Resize every image of ``ds`` once; normalisation is left to the loader."""
    to_pixels = pixels(img_size)
    images = [to_pixels(im) for im in ds[cols.image]]
    return Materialised(
        torch.stack(images) if images else torch.empty(0, 3, img_size, img_size,
                                                       dtype=torch.uint8),
        torch.tensor(ds[cols.label], dtype=torch.long),
    )


def normalise(images: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """``uint8`` images -> float32, scaled and normalised exactly as ``ToTensor`` then
    ``Normalize`` would."""
    x = images.to(torch.float32).div(255)
    return x.sub_(torch.tensor(mean).view(-1, 1, 1)).div_(torch.tensor(std).view(-1, 1, 1))


def make_loader(
    data: Dataset | Materialised,
    cols: Columns,
    cfg: AppConfig,
    mean: tuple,
    std: tuple,
    shuffle: bool,
    batch_size: int,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader of ``(images, labels)``; workers and pinned memory on a GPU."""
    generator = torch.Generator().manual_seed(seed)
    if not isinstance(data, Materialised) and fits_in_memory(len(data), cfg.img_size):
        data = materialise(data, cols, cfg.img_size)  # transformed once, not every epoch
    if isinstance(data, Materialised):
        return DataLoader(TensorDataset(normalise(data.images, mean, std), data.labels),
                          batch_size=batch_size, shuffle=shuffle, generator=generator)
    to_pixels = pixels(cfg.img_size)

    def apply(batch: dict) -> dict:
        return {"image": [normalise(to_pixels(im), mean, std) for im in batch[cols.image]],
                "label": batch[cols.label]}

    return DataLoader(
        data.with_transform(apply),
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


# ------------------------------------------------------------- a client's cached partition


@dataclass(frozen=True)
class ClientData:
    """A client's local ``train`` and ``val`` splits and the dataset's columns."""

    train: Dataset | Materialised
    val: Dataset | Materialised
    cols: Columns


def client_data(cfg: AppConfig, partition_id: int, num_partitions: int) -> ClientData:
    """A client's splits. Small partitions of digits or a local folder come materialised,
    from the partition cache when they are there; others as ``datasets.Dataset``."""
    path = partition_cache_path(cfg, partition_id, num_partitions)
    if path is not None and path.is_file():
        saved = torch.load(path, weights_only=True)
        return ClientData(Materialised(saved["train-images"], saved["train-labels"]),
                          Materialised(saved["val-images"], saved["val-labels"]),
                          Columns(*saved["columns"]))
    splits = client_splits(cfg, partition_id, num_partitions)
    cols = dataset_columns(cfg)
    if path is None or not fits_in_memory(len(splits["train"]) + len(splits["val"]),
                                          cfg.img_size):
        return ClientData(splits["train"], splits["val"], cols)
    data = ClientData(materialise(splits["train"], cols, cfg.img_size),
                      materialise(splits["val"], cols, cfg.img_size), cols)
    _save_atomic(path, {
        "train-images": data.train.images, "train-labels": data.train.labels,
        "val-images": data.val.images, "val-labels": data.val.labels,
        "columns": [cols.image, cols.label, cols.num_classes],
    })
    return data


def central_test_data(cfg: AppConfig) -> tuple[Dataset | Materialised, Columns]:
    """The server's held-out split and the dataset's columns. For digits or a local folder
    a small split comes materialised, from the cache when it is there, so a ServerApp
    process that finds it never imports ``datasets`` (about 3-4 s a run)."""
    path = _cache_path(cfg, {"split": "test", "seed": cfg.seed, "img-size": cfg.img_size})
    if path is not None and path.is_file():
        saved = torch.load(path, weights_only=True)
        return Materialised(saved["images"], saved["labels"]), Columns(*saved["columns"])
    test, cols = central_test_set(cfg), dataset_columns(cfg)
    if path is None or not fits_in_memory(len(test), cfg.img_size):
        return test, cols
    data = materialise(test, cols, cfg.img_size)
    _save_atomic(path, {"images": data.images, "labels": data.labels,
                        "columns": [cols.image, cols.label, cols.num_classes]})
    return data, cols


def partition_cache_path(cfg: AppConfig, partition_id: int, num_partitions: int
                         ) -> Path | None:
    """The cache file of this client partition (see ``_cache_path``)."""
    return _cache_path(cfg, {
        "partitioner": cfg.partitioner, "dirichlet-alpha": cfg.dirichlet_alpha,
        "seed": cfg.seed, "val-fraction": cfg.val_fraction, "img-size": cfg.img_size,
        "partition": [partition_id, num_partitions],
    })


def _cache_path(cfg: AppConfig, what: dict) -> Path | None:
    """The cache file of a materialised split, or None for a hub dataset (a hub revision
    can change under the same name). The key holds the data's source (a local folder's
    file names, sizes and mtimes) and ``what``: everything else the split depends on."""
    if cfg.dataset == EMBEDDED_DATASET:
        source: dict = {"embedded": cfg.dataset, "split": [
            DIGITS_SPLIT_SEED, DIGITS_TEST_FRACTION, DIGITS_PUBLIC_FRACTION]}
    else:
        root = resolve_path(cfg.dataset)
        if not (root.is_absolute() and root.is_dir()):
            return None
        files = sorted(p for p in root.rglob("*") if p.is_file())
        source = {"folder": str(root), "files": [
            [str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]}
    key = {"version": PARTITION_CACHE_VERSION, "source": source, **what}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "partitions" / f"{digest}.pt"


def _save_atomic(path: Path, tensors: dict) -> None:
    """Write atomically: processes of one machine may build the same split at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(tensors, tmp)
