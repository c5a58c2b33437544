"""Fixtures for the web page: a small trained run on fundus-like photographs, real uploads."""

from pathlib import Path

import pytest
from PIL import Image

from drgrade.demo import run_demo


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """A classification run: the demo, small (24 synthetic photographs, one epoch, 128 px)."""
    out = tmp_path_factory.mktemp("serve-demo")
    run_demo(out, n_images=24, epochs=1, say=lambda *_: None)
    return out / "run"


@pytest.fixture(scope="session")
def regression_run(shared_data, tmp_path_factory) -> Path:
    """A regression-head run trained a few steps on RetinaMNIST at 28 px."""
    from drgrade.config import load_config
    from drgrade.fit import train

    config = load_config(None, {
        "data": str(shared_data / "retinamnist/retinamnist.npz"), "head": "regression",
        "out": str(tmp_path_factory.mktemp("runs") / "regression"), "image_size": 28,
        "batch_size": 16, "epochs": 1, "max_train_batches": 2, "optimizer": "adamw",
        "lr": 2e-3, "num_workers": 0, "accelerator": "cpu", "devices": "1",
    })
    return train(config, progress=False)


@pytest.fixture(scope="session")
def photograph(shared_data) -> Path:
    """A real IDRiD photograph (4288x2848 JPEG, about 400 kB)."""
    return shared_data / "idrid-train/fullres/IDRiD_001.jpg"


@pytest.fixture(scope="session")
def black_png(tmp_path_factory) -> Path:
    """An all-black PNG: an image, but no fundus photograph."""
    path = tmp_path_factory.mktemp("uploads") / "black.png"
    Image.new("RGB", (800, 600)).save(path)
    return path
