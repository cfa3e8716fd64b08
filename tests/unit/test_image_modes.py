"""Input data is never silently corrupted: every image mode the loader
accepts reaches the model's 8-bit RGB input with its values scaled faithfully, and a mode
it cannot convert is refused before training, naming the column and the mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

import fedvit.data.loaders as fdata
from fedvit.config.appconfig import AppConfig, ConfigError
from fedvit.data.loaders import (
    EIGHT_BIT_MODES,
    SIXTEEN_BIT_MODES,
    central_test_data,
    make_loader,
    materialise,
    to_rgb,
)
from fedvit.data.partitions import Columns

FAST = {"model-name": "test_vit", "img-size": 8, "patch-size": 4, "weights-path": ""}
GREY = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1040  # 0 .. 65520, 16-bit


def _folder(root: Path) -> Path:
    """An image folder of 16-bit greyscale PNGs (PIL mode I;16), 2 classes, train/test."""
    for split in ("train", "test"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(3):
                PILImage.fromarray(GREY + i).save(root / split / label / f"{i}.png")
    assert PILImage.open(root / "test" / "a" / "0.png").mode == "I;16"
    return root


def test_sixteen_bit_png_folder_reaches_the_model_scaled_not_clipped(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDVIT_CACHE", str(tmp_path / "cache"))
    cfg = AppConfig.from_run_config({**FAST, "dataset": str(_folder(tmp_path / "pngs"))})
    test, cols = central_test_data(cfg)
    expected = np.round(GREY / 257).astype(np.uint8)  # 16 -> 8 bits, as 65535 -> 255
    images = test.images.numpy()
    assert images.shape == (6, 3, 8, 8)
    np.testing.assert_allclose(images[0, 0], expected, atol=1)  # not 98 % white
    assert (images == 255).mean() < 0.05
    assert (images[:, 0] == images[:, 1]).all() and (images[:, 1] == images[:, 2]).all()


@pytest.mark.parametrize("mode", SIXTEEN_BIT_MODES)
def test_every_sixteen_bit_mode_is_scaled(mode):
    order = {"I;16B": ">u2", "I;16L": "<u2"}.get(mode, "=u2")
    image = PILImage.frombytes(mode, (8, 8), GREY.astype(order).tobytes())
    rgb = np.asarray(to_rgb(image, "image"))
    np.testing.assert_allclose(rgb[..., 0], np.round(GREY / 257), atol=1)


@pytest.mark.parametrize("mode", EIGHT_BIT_MODES)
def test_every_eight_bit_mode_keeps_its_values(mode):
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = PILImage.fromarray(rgb).convert(mode)
    assert np.array_equal(np.asarray(to_rgb(image, "image")), np.asarray(image.convert("RGB")))
    if mode in ("L", "LA"):  # greyscale: the grey value on all three channels
        grey = np.asarray(image.getchannel(0))
        assert np.array_equal(np.asarray(to_rgb(image, "image"))[..., 1], grey)


@pytest.mark.parametrize("mode", ["I", "F"])
def test_modes_of_unknown_range_are_refused_before_training_naming_column_and_mode(mode):
    values = GREY.astype(np.float32 if mode == "F" else np.int32)
    ds = Dataset.from_dict({"img": [PILImage.fromarray(values, mode=mode)] * 2,
                            "label": [0, 1]},
                           features=Features({"img": Image(), "label": ClassLabel(num_classes=2)}))
    assert ds[0]["img"].mode == mode
    cols = Columns("img", "label", 2)
    expected = f"'dataset' column 'img' holds an image of PIL mode '{mode}'"
    with pytest.raises(ConfigError, match=expected):
        materialise(ds, cols, 8)
    cfg = AppConfig.from_run_config(FAST)
    with pytest.MonkeyPatch.context() as mp:  # the per-batch path: refused when built
        mp.setattr(fdata, "MATERIALIZE_BYTES", 0)
        with pytest.raises(ConfigError, match=expected):
            make_loader(ds, cols, cfg, (0.5,) * 3, (0.5,) * 3, shuffle=False, batch_size=2)
