"""Splits -> tensors -> loaders. Small splits are cached as uint8 tensors, so a process finding
its split never imports ``datasets``/``flwr_datasets`` (about 4 s; Flower 1.41 starts a ClientApp
process per message); torchvision (1.3 s) is imported lazily too."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedvit.config.appconfig import AppConfig, ConfigError
from fedvit.config.paths import EMBEDDED_DATASET, cache_dir, resolve_path
from fedvit.data import partitions
from fedvit.data.partitions import Columns, central_test_set, client_splits, dataset_columns
from fedvit.files import atomic_path

if TYPE_CHECKING:
    from datasets import Dataset
    from PIL.Image import Image as PILImage
    from torchvision import transforms

MATERIALIZE_BYTES = 256 * 2**20  # below this, a split is transformed once into tensors
PARTITION_CACHE_VERSION = 2  # bump when what a cached partition holds changes
# PIL modes that ``convert("RGB")`` maps faithfully (8 bits a channel, alpha dropped), and
# 16-bit grey modes, scaled here (``convert`` would clip all above 255 to white). Others
# ("I", "F": 32-bit, range unknown) are refused.
EIGHT_BIT_MODES = ("1", "L", "P", "LA", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK",
                   "YCbCr", "HSV")
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def fits_in_memory(num_examples: int, img_size: int) -> bool:
    return num_examples * 3 * img_size**2 * 4 <= MATERIALIZE_BYTES


@dataclass(frozen=True)
class Materialised:
    """A split as tensors: images ``(N, 3, S, S)`` uint8 RGB, labels ``(N,)`` int64."""

    images: torch.Tensor
    labels: torch.Tensor


def to_rgb(image: PILImage, column: str) -> PILImage:
    """An image as 8-bit RGB, a 16-bit value ``v`` as ``round(v * 255 / 65535)``; ConfigError:
    a mode outside ``EIGHT_BIT_MODES`` and ``SIXTEEN_BIT_MODES``."""
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
    """PIL image -> ``(3, img_size, img_size)`` uint8 RGB tensor (``to_rgb``, resize)."""
    from torchvision import transforms
    return transforms.Compose([
        transforms.Lambda(lambda im: to_rgb(im, column)),
        transforms.Resize((img_size, img_size)),
        transforms.PILToTensor(),
    ])


def materialise(ds: Dataset, cols: Columns, img_size: int) -> Materialised:
    """Every image of ``ds`` resized once (not normalised); raises as ``to_rgb``."""
    images = list(map(pixels(img_size, cols.image), ds[cols.image]))
    empty = torch.empty(0, 3, img_size, img_size, dtype=torch.uint8)
    return Materialised(torch.stack(images) if images else empty,
                        torch.tensor(ds[cols.label], dtype=torch.long))


def normalise(images: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    """``(images / 255 - mean) / std`` as float32, as ``ToTensor`` then ``Normalize`` give;
    ``images`` ``(..., 3, H, W)`` uint8, mean/std per channel on the [0, 1] scale."""
    x = images.to(torch.float32).div(255)
    return x.sub_(torch.tensor(mean).view(-1, 1, 1)).div_(torch.tensor(std).view(-1, 1, 1))


def make_loader(data: Dataset | Materialised, cols: Columns, cfg: AppConfig, mean: tuple,
                std: tuple, shuffle: bool, batch_size: int, seed: int = 0) -> DataLoader:
    """Batches of normalised images ``(B, 3, S, S)`` float32 and labels ``(B,)`` int64, shuffled
    with ``seed``. A split that ``fits_in_memory`` is materialised first (transformed once); a
    larger one is transformed per batch, with workers and pinned memory on a GPU."""
    generator = torch.Generator().manual_seed(seed)
    if not isinstance(data, Materialised) and fits_in_memory(len(data), cfg.img_size):
        data = materialise(data, cols, cfg.img_size)
    if isinstance(data, Materialised):
        return DataLoader(TensorDataset(normalise(data.images, mean, std), data.labels),
                          batch_size=batch_size, shuffle=shuffle, generator=generator)
    to_pixels = pixels(cfg.img_size, cols.image)
    if len(data):  # an unconvertible mode is refused before training, not in its first step
        to_rgb(data[0][cols.image], cols.image)

    def apply(batch: dict) -> dict:
        return {"image": [normalise(to_pixels(im), mean, std) for im in batch[cols.image]],
                "label": batch[cols.label]}

    def collate(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.stack([r["image"] for r in rows]),
                torch.tensor([r["label"] for r in rows], dtype=torch.long))

    return DataLoader(data.with_transform(apply), batch_size=batch_size, shuffle=shuffle,
                      generator=generator, pin_memory=cfg.use_cuda, collate_fn=collate,
                      num_workers=min(4, os.cpu_count() or 1) if cfg.use_cuda else 0)


@dataclass(frozen=True)
class ClientData:
    """A client's local splits (materialised, or ``datasets.Dataset``) and the columns."""

    train: Dataset | Materialised
    val: Dataset | Materialised
    cols: Columns


def client_data(cfg: AppConfig, partition_id: int, num_partitions: int) -> ClientData:
    """A client's ``train`` and ``val`` splits, from the partition cache when there; ConfigError:
    as ``fedvit.data.partitions.client_splits`` (on a cache miss)."""
    splits, cols = _cached(cfg, partition_cache_path(cfg, partition_id, num_partitions),
                           {"train": "train-", "val": "val-"},
                           lambda: (client_splits(cfg, partition_id, num_partitions),
                                    dataset_columns(cfg)))
    return ClientData(splits["train"], splits["val"], cols)


def central_test_data(cfg: AppConfig) -> tuple[Dataset | Materialised, Columns]:
    """The server's test split and the columns, from the cache when there (a ServerApp
    process that finds it never imports ``datasets``). ConfigError: dataset not loadable."""
    path = _cache_path(cfg, {"split": "test", "seed": cfg.seed, "img-size": cfg.img_size})
    splits, cols = _cached(cfg, path, {"test": ""},
                           lambda: ({"test": central_test_set(cfg)}, dataset_columns(cfg)))
    return splits["test"], cols


def _cached(cfg: AppConfig, path: Path | None, prefixes: dict[str, str],
            build: Callable[[], tuple[dict[str, Dataset], Columns]]
            ) -> tuple[dict[str, Dataset | Materialised], Columns]:
    """Splits from the cache file ``path`` (tensors ``<prefix>images``, ``<prefix>labels``
    per split, and ``columns``), else ``build()``'s, materialised and written atomically
    (processes of one machine may build the same split at once) when they fit in memory."""
    if path is not None and path.is_file():
        saved = torch.load(path, weights_only=True)
        return ({s: Materialised(saved[p + "images"], saved[p + "labels"])
                 for s, p in prefixes.items()}, Columns(*saved["columns"]))
    splits, cols = build()
    if path is None or not fits_in_memory(sum(map(len, splits.values())), cfg.img_size):
        return dict(splits), cols
    data = {s: materialise(ds, cols, cfg.img_size) for s, ds in splits.items()}
    out = {p + k: getattr(data[s], k) for s, p in prefixes.items() for k in ("images", "labels")}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({**out, "columns": [cols.image, cols.label, cols.num_classes]}, tmp)
    return dict(data), cols


def partition_cache_path(cfg: AppConfig, partition_id: int, num_partitions: int
                         ) -> Path | None:
    """A client partition's cache file (maybe not there yet); None for a hub dataset."""
    return _cache_path(cfg, {
        "partitioner": cfg.partitioner, "dirichlet-alpha": cfg.dirichlet_alpha,
        "seed": cfg.seed, "val-fraction": cfg.val_fraction, "img-size": cfg.img_size,
        "partition": [partition_id, num_partitions],
    })


def _cache_path(cfg: AppConfig, what: dict) -> Path | None:
    """The cache file of a split, keyed by its source (a local folder's file names, sizes,
    mtimes) and ``what`` else it depends on; None for a hub dataset (a hub revision can
    change under the same name)."""
    if cfg.dataset == EMBEDDED_DATASET:
        source: dict = {"embedded": cfg.dataset, "split": [
            partitions.DIGITS_SPLIT_SEED, partitions.DIGITS_TEST_FRACTION,
            partitions.DIGITS_PUBLIC_FRACTION]}
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
