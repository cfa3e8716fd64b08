"""Data: digits splits, IID/Dirichlet partitions, the hub path on local files, loaders."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage

from fedvit.config.appconfig import AppConfig, ConfigError
from fedvit.data import loaders as fdata
from fedvit.data.loaders import (
    Materialised,
    central_test_data,
    client_data,
    make_loader,
    partition_cache_path,
)
from fedvit.data.partitions import (
    Columns,
    central_test_set,
    client_splits,
    dataset_columns,
    digits_splits,
)

FAST = {"weights-path": ""}
HALF = (0.5, 0.5, 0.5)
DIGITS = Columns(image="image", label="label", num_classes=10)


def _cfg(**overrides) -> AppConfig:
    return AppConfig.from_run_config({**FAST, **{k.replace("_", "-"): v for k, v in
                                                 overrides.items()}})


def _pixels(ds: Dataset, cols: Columns) -> list[tuple[bytes, int]]:
    """One identity per example: decoded pixel bytes and label."""
    return [
        (np.asarray(im).tobytes(), int(lab))
        for im, lab in zip(ds[cols.image], ds[cols.label], strict=True)
    ]


def _keys(ds: Dataset, cols: Columns) -> list[tuple[bytes, int]]:
    """One identity per example, without decoding: stored image bytes and label."""
    raw = ds.cast_column(cols.image, Image(decode=False))[cols.image]
    return [(im["bytes"], int(lab)) for im, lab in zip(raw, ds[cols.label], strict=True)]


@pytest.fixture(scope="module")
def digits() -> DatasetDict:
    return digits_splits()


# ---------------------------------------------------------------------------- digits


def test_digits_split_sizes_and_classes(digits: DatasetDict) -> None:
    assert list(digits) == ["train", "public", "test"]
    sizes = {name: len(split) for name, split in digits.items()}
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == math.ceil(0.2 * 1797) == 360
    for split in digits.values():
        assert split.features["label"] == ClassLabel(names=[str(d) for d in range(10)])
        assert isinstance(split.features["image"], Image)
        assert sorted(set(split["label"])) == list(range(10))  # stratified: all classes


def test_digits_splits_are_disjoint_and_cover_digits(digits: DatasetDict) -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.clip(bunch.images * 16, 0, 255).astype(np.uint8)
    everything = Counter(
        (p.tobytes(), int(t)) for p, t in zip(pixels, bunch.target, strict=True)
    )
    assert len(everything) == 1797  # every digits example is unique
    keys = {name: _pixels(split, DIGITS) for name, split in digits.items()}
    for name, k in keys.items():
        assert len(set(k)) == len(k), name
    train, public, test = (set(keys[n]) for n in ("train", "public", "test"))
    assert not train & public
    assert not train & test
    assert not public & test
    assert train | public | test == set(everything)


def test_digits_splits_are_fixed(digits: DatasetDict) -> None:
    again = digits_splits()
    for name in digits:
        assert _keys(again[name], DIGITS) == _keys(digits[name], DIGITS)


# ---------------------------------------------------------------------------- partitions


def _partitions(cfg: AppConfig, n: int) -> list[DatasetDict]:
    return [client_splits(cfg, pid, n) for pid in range(n)]


def _partition_keys(parts: list[DatasetDict]) -> list[list[tuple[bytes, int]]]:
    return [_keys(p["train"], DIGITS) + _keys(p["val"], DIGITS) for p in parts]


def _assert_disjoint_cover(part_keys: list[list], train_keys: list) -> None:
    flat = [k for keys in part_keys for k in keys]
    assert len(flat) == len(train_keys)
    assert len(set(flat)) == len(flat)  # no example in two partitions (or twice in one)
    assert set(flat) == set(train_keys)


def test_iid_partitions(digits: DatasetDict) -> None:
    cfg = _cfg()
    parts = _partitions(cfg, 3)
    sizes = [len(p["train"]) + len(p["val"]) for p in parts]
    assert sum(sizes) == len(digits["train"]) == 718
    assert max(sizes) - min(sizes) <= 1
    _assert_disjoint_cover(_partition_keys(parts), _keys(digits["train"], DIGITS))
    for p, size in zip(parts, sizes, strict=True):
        assert list(p) == ["train", "val"]
        assert len(p["val"]) == math.ceil(cfg.val_fraction * size)
        assert abs(len(p["val"]) / size - cfg.val_fraction) < 0.01


def test_val_fraction_is_used() -> None:
    parts = _partitions(_cfg(val_fraction=0.5), 2)
    for p in parts:
        assert abs(len(p["val"]) - len(p["train"])) <= 1


@pytest.mark.parametrize("pid", [-1, 3, 7])
def test_partition_id_out_of_range(pid: int) -> None:
    with pytest.raises(ConfigError) as info:
        client_splits(_cfg(), pid, 3)
    assert str(info.value) == (
        f"node config 'partition-id' = {pid} is not allowed: must be in [0, 3) for "
        "'num-partitions' = 3"
    )


def _concentration(part_keys: list[list[tuple[bytes, int]]]) -> float:
    """Mean over classes of the share of the class held by its biggest partition."""
    counts = [Counter(label for _, label in keys) for keys in part_keys]
    shares = [
        max(c[label] for c in counts) / sum(c[label] for c in counts) for label in range(10)
    ]
    return float(np.mean(shares))


def test_dirichlet_partitions_cover_disjoint_and_skewed(digits: DatasetDict) -> None:
    cfg = _cfg(partitioner="dirichlet", dirichlet_alpha=0.1)
    part_keys = _partition_keys(_partitions(cfg, 3))
    _assert_disjoint_cover(part_keys, _keys(digits["train"], DIGITS))
    majority = [
        Counter(label for _, label in keys).most_common(1)[0][1] / len(keys)
        for keys in part_keys
    ]
    assert max(majority) > 0.3  # IID would be ~0.1 for 10 balanced classes
    assert _concentration(part_keys) > 0.8
    iid_keys = _partition_keys(_partitions(_cfg(), 3))
    assert _concentration(iid_keys) < 0.6


def test_dirichlet_seeded() -> None:
    base = {"partitioner": "dirichlet", "dirichlet_alpha": 0.1}
    # distinct configs (so no cache hit) with the same seed ...
    first = _partition_keys(_partitions(_cfg(seed=42, **base), 3))
    same = _partition_keys(_partitions(_cfg(seed=42, num_server_rounds=3, **base), 3))
    other = _partition_keys(_partitions(_cfg(seed=7, **base), 3))
    assert same == first
    assert [sorted(k) for k in other] != [sorted(k) for k in first]


# ----------------------------------------------------------------- the partition cache


def _batches(data, cols: Columns, cfg: AppConfig) -> list:
    loader = make_loader(data, cols, cfg, HALF, HALF, shuffle=False, batch_size=64)
    return [(x, y) for x, y in loader]


def test_cached_partition_is_the_fresh_one_and_loads_without_datasets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDVIT_CACHE", str(tmp_path))
    cfg = _cfg(partitioner="dirichlet", dirichlet_alpha=0.3)
    built = client_data(cfg, 1, 3)  # a miss: split, materialise, write
    path = partition_cache_path(cfg, 1, 3)
    assert path.is_file() and list(path.parent.iterdir()) == [path]
    fresh = client_splits(cfg, 1, 3)
    assert built.cols == DIGITS
    for name in ("train", "val"):
        cached = client_data(cfg, 1, 3)  # a hit
        for (x, y), (fx, fy) in zip(_batches(getattr(cached, name), DIGITS, cfg),
                                    _batches(fresh[name], DIGITS, cfg), strict=True):
            assert torch.equal(x, fx) and torch.equal(y, fy)
    # A fresh process that finds its partition cached never imports datasets.
    code = ("import sys; from fedvit.config.appconfig import AppConfig; "
            "from fedvit.data.loaders import "
            "client_data; d = client_data(AppConfig.from_run_config({'weights-path': '', "
            "'partitioner': 'dirichlet', 'dirichlet-alpha': 0.3}), 1, 3); "
            "print(len(d.train.labels), len(d.val.labels), "
            "sorted(m for m in ('datasets', 'flwr_datasets', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "FEDVIT_CACHE": str(tmp_path)}, check=True)
    assert out.stdout.split() == [str(len(fresh["train"])), str(len(fresh["val"])), "[]"]


def test_partition_cache_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDVIT_CACHE", str(tmp_path))
    base = partition_cache_path(_cfg(), 0, 2)
    assert base.parent == tmp_path / "partitions"
    others = [partition_cache_path(_cfg(), 1, 2), partition_cache_path(_cfg(), 0, 3),
              partition_cache_path(_cfg(seed=1), 0, 2),
              partition_cache_path(_cfg(img_size=32), 0, 2),
              partition_cache_path(_cfg(val_fraction=0.2), 0, 2),
              partition_cache_path(_cfg(partitioner="dirichlet"), 0, 2)]
    assert len({base, *others}) == 7
    assert partition_cache_path(_cfg(num_server_rounds=9, batch_size=8), 0, 2) == base
    folder = tmp_path / "local"
    folder.mkdir()
    (folder / "a.parquet").write_bytes(b"x")
    before = partition_cache_path(_cfg(dataset=str(folder)), 0, 2)
    (folder / "a.parquet").write_bytes(b"xy")  # the data changed: another partition
    assert partition_cache_path(_cfg(dataset=str(folder)), 0, 2) not in (before, None)
    assert partition_cache_path(_cfg(dataset="uoft-cs/cifar100"), 0, 2) is None  # hub


def test_cached_test_split_is_the_fresh_one_and_loads_without_datasets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDVIT_CACHE", str(tmp_path))
    cfg = _cfg()
    built, cols = central_test_data(cfg)  # a miss: split, materialise, write
    assert isinstance(built, Materialised) and cols == DIGITS
    (path,) = (tmp_path / "partitions").iterdir()
    assert path != partition_cache_path(cfg, 0, 1)
    cached, cached_cols = central_test_data(cfg)  # a hit
    assert cached_cols == DIGITS
    fresh = central_test_set(cfg)
    for (x, y), (fx, fy) in zip(_batches(cached, DIGITS, cfg), _batches(fresh, DIGITS, cfg),
                                strict=True):
        assert torch.equal(x, fx) and torch.equal(y, fy)
    central_test_data(_cfg(img_size=32))  # another image size: another file
    assert len(list((tmp_path / "partitions").iterdir())) == 2
    code = ("import sys; from fedvit.config.appconfig import AppConfig; "
            "from fedvit.data.loaders import "
            "central_test_data; d, c = central_test_data(AppConfig.from_run_config("
            "{'weights-path': ''})); print(len(d.labels), c.num_classes, "
            "sorted(m for m in ('datasets', 'flwr_datasets', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "FEDVIT_CACHE": str(tmp_path)}, check=True)
    assert out.stdout.split() == [str(len(fresh)), "10", "[]"]


# ---------------------------------------------------------------------------- hub path

HUB_TRAIN, HUB_TEST, HUB_CLASSES = 40, 10, 4


def _cifar_like(n: int, rng: np.random.Generator) -> Dataset:
    features = Features(
        {
            "img": Image(),
            "coarse_label": ClassLabel(names=["x", "y"]),  # listed first, not preferred
            "fine_label": ClassLabel(names=["a", "b", "c", "d"]),
        }
    )
    fine = [i % HUB_CLASSES for i in range(n)]
    return Dataset.from_dict(
        {
            "img": [
                PILImage.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
                for _ in range(n)
            ],
            "coarse_label": [f // 2 for f in fine],
            "fine_label": fine,
        },
        features=features,
    )


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory: pytest.TempPathFactory):
    """A CIFAR-100-like parquet dataset folder, with the HF cache kept in a temp dir."""
    root = tmp_path_factory.mktemp("cifar_like")
    rng = np.random.default_rng(0)
    splits = DatasetDict(train=_cifar_like(HUB_TRAIN, rng), test=_cifar_like(HUB_TEST, rng))
    (root / "data").mkdir()
    for name, split in splits.items():
        split.to_parquet(str(root / "data" / f"{name}-00000.parquet"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_cache"))
        loaded = datasets.load_dataset(str(root))
        assert {k: len(v) for k, v in loaded.items()} == {"train": HUB_TRAIN, "test": HUB_TEST}
        assert loaded["train"].features == splits["train"].features
        yield root, splits


HUB_COLS = Columns(image="img", label="fine_label", num_classes=HUB_CLASSES)


def test_hub_columns(hub_folder) -> None:
    root, _ = hub_folder
    assert dataset_columns(_cfg(dataset=str(root))) == HUB_COLS


def test_hub_client_splits_and_test_set(hub_folder) -> None:
    root, splits = hub_folder
    cfg = _cfg(dataset=str(root), seed=3)
    parts = [client_splits(cfg, pid, 2) for pid in range(2)]
    part_keys = [_pixels(p["train"], HUB_COLS) + _pixels(p["val"], HUB_COLS) for p in parts]
    train_keys = _pixels(splits["train"], HUB_COLS)
    assert len(set(train_keys)) == HUB_TRAIN
    flat = [k for keys in part_keys for k in keys]
    assert len(flat) == HUB_TRAIN
    assert set(flat) == set(train_keys)
    assert [len(k) for k in part_keys] == [20, 20]
    for p in parts:
        assert len(p["val"]) == 2
    test = central_test_set(cfg)
    assert len(test) == HUB_TEST
    assert sorted(_pixels(test, HUB_COLS)) == sorted(_pixels(splits["test"], HUB_COLS))


@pytest.mark.parametrize("materialize", [True, False])
def test_hub_loader(hub_folder, monkeypatch: pytest.MonkeyPatch, materialize: bool) -> None:
    root, _ = hub_folder
    cfg = _cfg(dataset=str(root), batch_size=4, img_size=12, patch_size=4)
    if not materialize:
        monkeypatch.setattr(fdata, "MATERIALIZE_BYTES", 0)  # the per-batch transform path
    test = central_test_set(cfg)
    loader = make_loader(test, HUB_COLS, cfg, HALF, HALF, shuffle=False,
                         batch_size=cfg.batch_size)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [4, 4, 2]
    for x, y in batches:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 12, 12)
        assert y.dtype == torch.long
        assert x.min() >= -1.0 and x.max() <= 1.0
    labels = torch.cat([y for _, y in batches])
    assert labels.tolist() == list(test["fine_label"])
    # pixel check: the first image, resized and normalised by hand
    first = test["img"][0].convert("RGB").resize((12, 12), PILImage.BILINEAR)
    expected = torch.from_numpy(np.asarray(first, dtype=np.float32) / 255).permute(2, 0, 1)
    torch.testing.assert_close(batches[0][0][0], (expected - 0.5) / 0.5, atol=2e-2, rtol=0)


def test_hub_missing_test_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    root = tmp_path / "train_only"
    (root / "data").mkdir(parents=True)
    _cifar_like(8, np.random.default_rng(1)).to_parquet(
        str(root / "data" / "train-00000.parquet")
    )
    with pytest.raises(ConfigError) as info:
        central_test_set(_cfg(dataset=str(root)))
    assert str(info.value).startswith(
        f"'dataset' = '{root}' could not be loaded with a 'train' and a 'test' split ("
    )


# ---------------------------------------------------------------------------- loaders


def test_digits_loader_shapes_and_range(digits: DatasetDict) -> None:
    cfg = _cfg(batch_size=32)
    train = digits["train"]
    loader = make_loader(train, DIGITS, cfg, HALF, HALF, shuffle=False,
                         batch_size=cfg.batch_size)
    batches = list(loader)
    assert len(batches) == math.ceil(718 / 32)
    assert [len(y) for _, y in batches] == [32] * 22 + [14]
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    assert images.shape == (718, 3, 16, 16) and images.dtype == torch.float32
    assert labels.dtype == torch.long
    assert labels.tolist() == list(train["label"])
    assert images.min().item() == -1.0  # digits background (0) -> (0 - .5) / .5
    assert images.max().item() == 1.0  # full ink (255) -> 1
    # grey input converted to RGB: the three channels are identical
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])


def test_digits_loader_other_normalisation(digits: DatasetDict) -> None:
    cfg = _cfg(batch_size=64, img_size=8, patch_size=4)
    loader = make_loader(digits["test"], DIGITS, cfg, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0),
                         shuffle=False, batch_size=cfg.batch_size)
    x, _ = next(iter(loader))
    assert x.shape == (64, 3, 8, 8)
    assert x.min().item() == 0.0 and x.max().item() == 1.0
    raw = np.asarray(digits["test"]["image"][0], dtype=np.float32) / 255
    torch.testing.assert_close(x[0, 0], torch.from_numpy(raw))


def test_digits_loader_shuffle_is_seeded(digits: DatasetDict) -> None:
    cfg = _cfg(batch_size=16)
    train = digits["train"].select(range(160))

    def order(seed: int) -> list[int]:
        loader = make_loader(train, DIGITS, cfg, HALF, HALF, shuffle=True,
                             batch_size=cfg.batch_size, seed=seed)
        return torch.cat([y for _, y in loader]).tolist()

    def first_batch(seed: int) -> torch.Tensor:
        loader = make_loader(train, DIGITS, cfg, HALF, HALF, shuffle=True,
                             batch_size=cfg.batch_size, seed=seed)
        return next(iter(loader))[0]

    assert order(5) == order(5)
    assert torch.equal(first_batch(5), first_batch(5))
    assert order(5) != order(6)
    assert order(5) != list(train["label"])  # actually shuffled
    assert sorted(order(5)) == sorted(train["label"])  # same examples
