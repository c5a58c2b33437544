"""Shared fixtures: the real data in ../shared/data, which CI must have."""

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; skipped when absent on a user's clone, a failure under CI=true."""
    if not SHARED_DATA.is_dir():
        reason = f"real data folder {SHARED_DATA} is absent"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}, and CI must run the real-data tests")
        pytest.skip(reason)
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_run(shared_data, tmp_path_factory) -> Path:
    """A run folder trained for a few steps on real RetinaMNIST (shared by read-only tests)."""
    from drgrade.config import load_config
    from drgrade.fit import train

    config = load_config(None, {
        "data": str(shared_data / "retinamnist/retinamnist.npz"),
        "out": str(tmp_path_factory.mktemp("runs") / "tiny"), "image_size": 28,
        "batch_size": 32, "epochs": 2, "max_train_batches": 4, "optimizer": "adamw",
        "lr": 2e-3, "num_workers": 0, "accelerator": "cpu", "devices": "1",
    })
    return train(config, progress=False)
