"""Fixtures for inference: real photographs, unusable files, small trained runs, an export."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drgrade.cli import main
from drgrade.config import load_config
from drgrade.data.prepare import prepare_dataset
from drgrade.data.sources import read_source
from drgrade.data.synthetic import write_synthetic_dataset
from drgrade.fit import train


@pytest.fixture(scope="session")
def photographs(shared_data) -> Path:
    """The 20 full-size IDRiD photographs (4288x2848 JPEG)."""
    return shared_data / "idrid-train/fullres"


@pytest.fixture(scope="session")
def odd_files(photographs, tmp_path_factory) -> dict[Path, str]:
    """Unusable files in one folder (a cut-off JPEG, an all-black image, text named .jpg),
    each with a word its `error` must contain."""
    folder = tmp_path_factory.mktemp("odd")
    whole = (photographs / "IDRiD_001.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    Image.new("RGB", (600, 400)).save(folder / "black.png")
    (folder / "notes.jpg").write_text("not a photograph")
    return {folder / "truncated.jpg": "truncated", folder / "black.png": "blank",
            folder / "notes.jpg": "not an image"}


@pytest.fixture(scope="session")
def odd_folder(odd_files) -> Path:
    """The folder of `odd_files`."""
    return next(iter(odd_files)).parent


def _train(tmp_path_factory, name: str, **settings) -> Path:
    config = load_config(None, {
        "out": str(tmp_path_factory.mktemp("runs") / name), "batch_size": 8, "epochs": 1,
        "max_train_batches": 2, "optimizer": "adamw", "lr": 2e-3, "num_workers": 0,
        "accelerator": "cpu", "devices": "1", **settings,
    })
    return train(config, progress=False)


@pytest.fixture(scope="session")
def regression_run(shared_data, tmp_path_factory) -> Path:
    """A regression-head run trained a few steps on RetinaMNIST at 28 px."""
    return _train(tmp_path_factory, "regression", head="regression", image_size=28,
                  data=str(shared_data / "retinamnist/retinamnist.npz"))


@pytest.fixture(scope="session")
def synthetic_photos(tmp_path_factory) -> Path:
    """12 synthetic fundus photographs in the EyePACS layout."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), 12, seed=3,
                                   widths=(300, 400))


@pytest.fixture(scope="session")
def fundus_run(synthetic_photos, tmp_path_factory) -> Path:
    """A run on the synthetic photographs prepared with fundus crop and Ben Graham at 96 px."""
    manifest = read_source(synthetic_photos).require_images()
    manifest.table["split"] = np.where(np.arange(len(manifest.table)) % 4 == 0, "val", "train")
    prepared = tmp_path_factory.mktemp("prepared")
    prepare_dataset(manifest, prepared, size=96, enhance="ben-graham", workers=1)
    return _train(tmp_path_factory, "fundus", data=str(prepared), image_size=96)


@pytest.fixture(scope="session")
def onnx_model(tiny_run, photographs, tmp_path_factory) -> Path:
    """tiny_run exported by `drgrade export`, checked on the IDRiD photographs."""
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    assert main(["export", str(tiny_run), "--onnx", str(out), "--check-images",
                 str(photographs)]) == 0
    return out
