"""Data as the model sees it: a client's or the server's split -> tensors -> loaders.

A client's partition of a small dataset (digits, or a local folder), and the server's test
split, are materialised once into ``uint8`` tensors and cached under
``$FEDVIT_CACHE/partitions``. A process that finds its split there never imports
``datasets`` or ``flwr_datasets`` (``fedvit.data.partitions``), which cost about 4 s a process
(and in deployment Flower 1.41 starts a ClientApp process per message); torchvision (about
1.3 s with the ``torch._dynamo`` its ``ops`` import) is imported inside the functions that
use it for the same reason.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedvit.config.appconfig import AppConfig, ConfigError
from fedvit.config.paths import EMBEDDED_DATASET, cache_dir, resolve_path
from fedvit.data.partitions import (
    DIGITS_PUBLIC_FRACTION,
    DIGITS_SPLIT_SEED,
    DIGITS_TEST_FRACTION,
    Columns,
    central_test_set,
    client_splits,
    dataset_columns,
)
from fedvit.files import atomic_path

if TYPE_CHECKING:
    from datasets import Dataset
    from PIL.Image import Image as PILImage
    from torchvision import transforms

MATERIALIZE_BYTES = 256 * 2**20  # below this, a split is transformed once into tensors
PARTITION_CACHE_VERSION = 2  # bump when what a cached partition holds changes


def fits_in_memory(num_examples: int, img_size: int) -> bool:
    """Whether a split is small enough to be transformed once into tensors.

    Args:
        num_examples: the split's size.
        img_size: the model's input side, pixels.

    Returns:
        True when its float32 images would take at most ``MATERIALIZE_BYTES``.
    """
    return num_examples * 3 * img_size**2 * 4 <= MATERIALIZE_BYTES


@dataclass(frozen=True)
class Materialised:
    """A split as tensors.

    Args:
        images: ``(N, 3, S, S)`` uint8 RGB, resized to the model's input side ``S``.
        labels: ``(N,)`` int64 class indices.
    """

    images: torch.Tensor
    labels: torch.Tensor


# PIL modes of 8 bits a channel, which ``convert("RGB")`` turns into RGB faithfully (alpha
# dropped), and the 16-bit greyscale modes, scaled to 8 bits here (``convert`` would clip
# every value above 255 to white). Others ("I", "F": 32-bit, range unknown) are refused.
EIGHT_BIT_MODES = ("1", "L", "P", "LA", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK",
                   "YCbCr", "HSV")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb(image: PILImage, column: str) -> PILImage:
    """An image as 8-bit RGB, its values scaled faithfully.

    Args:
        image: a PIL image of a mode in ``EIGHT_BIT_MODES`` or ``SIXTEEN_BIT_MODES``.
        column: the dataset's image column (for the message).

    Returns:
        An ``RGB`` image; a 16-bit value ``v`` becomes ``round(v * 255 / 65535)``.

    Raises:
        ConfigError: another mode, naming the column and the mode.
    """
    from PIL import Image

    if image.mode in EIGHT_BIT_MODES:
        return image.convert("RGB")
    if image.mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(image).astype(np.uint32)
        grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    raise ConfigError(
        f"'dataset' column {column!r} holds an image of PIL mode {image.mode!r}, which "
        "cannot be converted faithfully to the model's 8-bit RGB input (its value range is "
        f"not known); must hold images of modes {', '.join(EIGHT_BIT_MODES)} (8 bits) or "
        f"{', '.join(SIXTEEN_BIT_MODES)} (16-bit greyscale): convert the files to one")


def pixels(img_size: int, column: str) -> transforms.Compose:
    """The transform from a PIL image to pixels (``to_rgb``, then resized).

    Args:
        img_size: the output side, pixels.
        column: the dataset's image column (for ``to_rgb``'s message).

    Returns:
        A torchvision transform giving ``(3, img_size, img_size)`` uint8 RGB tensors.
    """
    from torchvision import transforms  # not imported by a process that finds its cache

    return transforms.Compose([
        transforms.Lambda(lambda im: to_rgb(im, column)),
        transforms.Resize((img_size, img_size)),
        transforms.PILToTensor(),
    ])


def materialise(ds: Dataset, cols: Columns, img_size: int) -> Materialised:
    """Resize every image of ``ds`` once; normalisation is left to the loader.

    Args:
        ds: a dataset split.
        cols: its columns.
        img_size: the model's input side, pixels.

    Returns:
        Its images ``(N, 3, img_size, img_size)`` uint8 and labels ``(N,)`` int64.

    Raises:
        ConfigError: an image of a mode ``to_rgb`` refuses.
    """
    to_pixels = pixels(img_size, cols.image)
    images = [to_pixels(im) for im in ds[cols.image]]
    return Materialised(
        torch.stack(images) if images else torch.empty(0, 3, img_size, img_size,
                                                       dtype=torch.uint8),
        torch.tensor(ds[cols.label], dtype=torch.long),
    )


def normalise(images: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """Scale and normalise images exactly as ``ToTensor`` then ``Normalize`` would.

    Args:
        images: ``(..., 3, H, W)`` uint8.
        mean: per-channel mean on the [0, 1] scale (``fedvit.model.tensors.input_stats``).
        std: per-channel standard deviation on that scale.

    Returns:
        ``(..., 3, H, W)`` float32: ``(images / 255 - mean) / std``.
    """
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
    """A DataLoader of ``(images, labels)``; workers and pinned memory on a GPU.

    A split that ``fits_in_memory`` is materialised first (transformed once, not every
    epoch); a larger one is transformed per batch.

    Args:
        data: a dataset split, or one already materialised.
        cols: its columns.
        cfg: ``img-size`` and the device (workers, pinned memory).
        mean: per-channel normalisation mean on the [0, 1] scale.
        std: per-channel normalisation standard deviation on that scale.
        shuffle: reshuffle every epoch (seeded).
        batch_size: examples per batch.
        seed: the shuffling generator's seed.

    Returns:
        Batches of images ``(B, 3, S, S)`` float32 normalised and labels ``(B,)`` int64.
    """
    generator = torch.Generator().manual_seed(seed)
    if not isinstance(data, Materialised) and fits_in_memory(len(data), cfg.img_size):
        data = materialise(data, cols, cfg.img_size)  # transformed once, not every epoch
    if isinstance(data, Materialised):
        return DataLoader(TensorDataset(normalise(data.images, mean, std), data.labels),
                          batch_size=batch_size, shuffle=shuffle, generator=generator)
    to_pixels = pixels(cfg.img_size, cols.image)
    if len(data):  # an unconvertible mode is refused before training, not in its first step
        to_rgb(data[0][cols.image], cols.image)

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
    """A client's local splits and the dataset's columns.

    Args:
        train: the local training split (materialised, or a ``datasets.Dataset``).
        val: the local validation split (likewise).
        cols: the dataset's columns.
    """

    train: Dataset | Materialised
    val: Dataset | Materialised
    cols: Columns


def client_data(cfg: AppConfig, partition_id: int, num_partitions: int) -> ClientData:
    """A client's splits. Small partitions of digits or a local folder come materialised,
    from the partition cache when they are there (written on a miss); others as
    ``datasets.Dataset``.

    Args:
        cfg: the run config.
        partition_id: this client's partition, in ``[0, num_partitions)``.
        num_partitions: how many clients share the data.

    Returns:
        The client's ``train`` and ``val`` splits and the columns.

    Raises:
        ConfigError: as ``fedvit.data.partitions.client_splits`` raises (on a cache miss).
    """
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
    process that finds it never imports ``datasets`` (about 3-4 s a run).

    Args:
        cfg: the run config.

    Returns:
        (the test split, materialised or a ``datasets.Dataset``; the columns).

    Raises:
        ConfigError: the dataset cannot be loaded (on a cache miss).
    """
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
    """The cache file of a client's partition.

    Args:
        cfg: the run config (dataset, partitioner, seed, sizes).
        partition_id: the partition.
        num_partitions: how many clients share the data.

    Returns:
        ``$FEDVIT_CACHE/partitions/<key digest>.pt`` (it may not exist yet), or None for
        a hub dataset (a hub revision can change under the same name).
    """
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
