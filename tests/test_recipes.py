"""The shipped published recipes (configs/eyepacs/) load, build and train a few batches on
synthetic photographs laid out as the EyePACS release and prepared with `drgrade prepare`."""

from pathlib import Path

import pandas as pd
import pytest

from drgrade.cli import main
from drgrade.config import load_config
from drgrade.data.datamodule import GradingDataModule
from drgrade.fit import train

RECIPES = sorted((Path(__file__).parents[1] / "configs" / "eyepacs").glob("huang2023-*.yaml"))


@pytest.fixture(scope="module")
def prepared_eyepacs(tmp_path_factory, eyepacs_release) -> Path:
    """A prepared folder of the EyePACS release layout: train/ + trainLabels.csv, test/ +
    retinopathy_solution.csv (Public = val, Private = test)."""
    root = eyepacs_release(tmp_path_factory.mktemp("eyepacs") / "release", n_train=16,
                           n_test=8, widths=(96, 128))
    out = root.parent / "prepared"
    assert main(["prepare", str(root), "--out", str(out), "--size", "96", "--workers", "1"]) == 0
    return out


def test_both_recipes_are_shipped():
    assert [path.stem for path in RECIPES] == ["huang2023-resnet18", "huang2023-resnet50"]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_recipe_trains_a_few_batches(recipe, prepared_eyepacs, tmp_path):
    published = load_config(recipe, {"data": str(prepared_eyepacs)})
    assert (published.image_size, published.batch_size, published.epochs) == (512, 16, 25)
    assert (published.head, published.loss_name(), published.pretrained) == ("regression",
                                                                             "mse", True)
    assert published.arch == recipe.stem.split("-")[1]
    # Offline and fast: no ImageNet download, two batches of one epoch. From scratch, two
    # steps leave batch norm's running statistics far off, and the validation loss of a
    # ResNet-50 at 64 px can pass the divergence guard's bound; at 96 px it stays well below.
    config = load_config(recipe, {
        "data": str(prepared_eyepacs), "out": str(tmp_path / "run"), "image_size": 96,
        "pretrained": False, "batch_size": 8, "epochs": 1, "max_train_batches": 2,
        "num_workers": 0, "accelerator": "cpu", "devices": "1",
    })
    splits = GradingDataModule(config).manifest.table["split"].value_counts().to_dict()
    assert splits == {"train": 16, "val": 4, "test": 4}  # the official split, kept
    log = pd.read_csv(train(config, progress=False) / "log.csv")
    assert log["epoch"].tolist() == [0] and log["val_kappa"].notna().all()
