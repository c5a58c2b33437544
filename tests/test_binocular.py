"""The binocular option (eyes both): each eye graded with its fellow eye's features."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from drgrade.checkpoint import load_network
from drgrade.config import load_config
from drgrade.data.datamodule import GradingDataModule
from drgrade.data.dataset import ManifestDataset
from drgrade.data.manifest import assign_splits
from drgrade.data.prepare import prepare_dataset
from drgrade.data.sources import read_source
from drgrade.data.synthetic import write_synthetic_dataset
from drgrade.errors import DrgradeError
from drgrade.evaluation.evaluate import evaluate
from drgrade.evaluation.report_data import comparison_pairs
from drgrade.fit import train
from drgrade.inference.explain import FellowsHeld
from drgrade.inference.export import TOLERANCE, export_onnx
from drgrade.inference.onnx_grader import OnnxGrader
from drgrade.inference.predict import predict
from drgrade.inference.torch_grader import TorchGrader
from drgrade.model_card import ModelCard
from drgrade.models import build_model
from drgrade.network import GradingNetwork
from drgrade.run_folder import best_checkpoint

SIZE = 64
LEGACY = Path(__file__).parent / "fixtures" / "legacy"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """40 synthetic EyePACS-layout photographs (left and right eyes of 20 patients)."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("photos"), 40, seed=0,
                                   widths=(200, 300))


@pytest.fixture(scope="module")
def prepared(photos, tmp_path_factory) -> Path:
    manifest = read_source(photos).require_images()
    manifest.table = assign_splits(manifest.table, 0.25, 0.25, 0)
    folder = tmp_path_factory.mktemp("prepared")
    prepare_dataset(manifest, folder, size=SIZE, workers=1)
    return folder


def settings(data, out, **more) -> dict:
    return {"data": str(data), "out": str(out), "arch": "resnet18", "image_size": SIZE,
            "batch_size": 8, "epochs": 1, "max_train_batches": 2, "optimizer": "adamw",
            "num_workers": 0, "accelerator": "cpu", "devices": "1", **more}


@pytest.fixture(scope="module")
def binocular_run(prepared, module_tmp) -> Path:
    return train(load_config(None, settings(prepared, module_tmp / "both",
                                            eyes="both")), progress=False)


def test_network_fallback_is_the_image_as_its_own_fellow():
    torch.manual_seed(0)
    network = GradingNetwork("resnet18", "classification", binocular=True).eval()
    images = torch.rand(4, 3, SIZE, SIZE)
    with torch.no_grad():
        alone, own, others = network(images), network(images, images), network(images,
                                                                               images.flip(0))
    assert alone.shape == (4, 5)
    torch.testing.assert_close(alone, own, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(own, others, atol=1e-4)  # the fellow matters
    regression = GradingNetwork("resnet18", "regression", binocular=True).eval()
    assert regression(images, images).shape == (4,)


def test_single_eye_network_keys_are_unchanged():
    single = set(GradingNetwork("resnet18", "classification").state_dict())
    assert single == {f"model.{k}" for k in build_model("resnet18").state_dict()} | {"thresholds"}
    both = set(GradingNetwork("resnet18", "classification", binocular=True).state_dict())
    assert both == (single - {"model.fc.weight", "model.fc.bias"}) | {"pair_head.weight",
                                                                       "pair_head.bias"}


def test_binocular_refuses_an_arch_without_a_linear_classifier():
    with pytest.raises(DrgradeError, match="eyes both.*squeezenet1_1.*Conv2d"):
        GradingNetwork("squeezenet1_1", "classification", binocular=True)


def test_dataset_returns_the_fellow_eye_or_the_image_itself(prepared):
    table = read_source(prepared).table
    rows = pd.concat([table[table["patient"] == table["patient"].iloc[0]],
                      table[table["patient"] == table["patient"].iloc[-1]].iloc[:1]])
    dataset = ManifestDataset(rows, fellows=True)
    assert dataset.fellows == [1, 0, -1]
    image, fellow, grade = dataset[0]
    assert grade == rows["grade"].iloc[0]
    assert np.array_equal(np.asarray(fellow), np.asarray(dataset.open(1)))
    alone, itself, _ = dataset[2]
    assert np.array_equal(np.asarray(alone), np.asarray(itself))
    assert len(ManifestDataset(rows)[0]) == 2  # single-eye: (image, grade) as before


def test_datamodule_pairs_within_the_split(prepared, tmp_path):
    module = GradingDataModule(load_config(None, settings(prepared, tmp_path, eyes="both")))
    for split in ("train", "val"):
        rows = module.table[module.table["split"] == split].reset_index(drop=True)
        dataset = module.dataset(split, train=split == "train")
        paired = [(k, f) for k, f in enumerate(dataset.fellows) if f >= 0]
        assert paired
        for k, f in paired:
            assert rows["patient"][k] == rows["patient"][f]
            assert {rows["eye"][k], rows["eye"][f]} == {"left", "right"}
        image, fellow, _ = dataset[(paired[0][0], 123)]
        again, fellow_again, _ = dataset[(paired[0][0], 123)]
        assert np.array_equal(image, again) and np.array_equal(fellow, fellow_again)


def test_binocular_run_trains_and_its_card_says_so(binocular_run):
    network, card = load_network(best_checkpoint(binocular_run))
    assert card.binocular and network.binocular
    assert "eyes: both" in (binocular_run / "config.yaml").read_text()


def _pair_and_single(photos: Path, folder: Path) -> Path:
    """Patient 1's two eyes and patient 7's left eye alone."""
    folder.mkdir()
    left = sorted((photos / "train").glob("*_left.jpeg"))
    for eye in ("left", "right"):
        shutil.copy(left[0].with_name(left[0].name.replace("left", eye)),
                    folder / f"1_{eye}.jpeg")
    shutil.copy(left[1], folder / "7_left.jpeg")
    return folder


def test_predict_pairs_fellow_eyes_and_falls_back_alone(binocular_run, photos, tmp_path):
    folder = _pair_and_single(photos, tmp_path / "photos")
    grader = TorchGrader.from_checkpoint(binocular_run, device="cpu")
    rows = {}
    for batch_size in (1, 3):  # a fellow in another batch is loaded with this one
        out = tmp_path / f"b{batch_size}.csv"
        predict(grader, [folder], out, batch_size=batch_size, progress=False)
        with out.open(newline="") as handle:
            rows[batch_size] = {Path(r["image"]).stem: r for r in csv.DictReader(handle)}
    found = rows[1]
    assert {k: Path(r["fellow"]).stem for k, r in found.items()} == {
        "1_left": "1_right", "1_right": "1_left", "7_left": "7_left"}
    for name, row in found.items():
        assert np.allclose([float(row[f"p{g}"]) for g in range(5)],
                           [float(rows[3][name][f"p{g}"]) for g in range(5)], atol=1e-5)


def test_heat_maps_explain_each_eye_as_graded_with_its_fellow(binocular_run, photos, tmp_path):
    grader = TorchGrader.from_checkpoint(binocular_run, device="cpu")
    rng = np.random.default_rng(0)
    images, fellows = (grader.tensor(rng.standard_normal((3, 3, SIZE, SIZE)).astype(np.float32))
                       for _ in range(2))
    # What Grad-CAM differentiates is the graded output: these fellows, not the image itself.
    with torch.no_grad():
        held = FellowsHeld(grader.network, fellows)(images)
        assert torch.allclose(held, grader.network(images, fellows), atol=1e-5)
        assert not torch.allclose(held, grader.network(images), atol=1e-4)
    folder = _pair_and_single(photos, tmp_path / "photos")
    out = tmp_path / "explained.csv"
    predict(grader, [folder], out, explain=tmp_path / "maps", progress=False)
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and all(Path(r["heat_map"]).is_file() for r in rows)


def test_evaluate_a_binocular_run(binocular_run):
    metrics = evaluate(binocular_run, split="test", progress=False)
    assert metrics["patient_level"] is not None
    assert (Path(metrics["out"]) / "predictions.csv").is_file()


def test_onnx_export_of_a_binocular_model(binocular_run, tmp_path):
    grader = TorchGrader.from_checkpoint(binocular_run, device="cpu")
    report = export_onnx(grader, tmp_path / "both.onnx")
    assert report.max_difference <= TOLERANCE
    onnx = OnnxGrader(tmp_path / "both.onnx")
    assert onnx.card.binocular
    assert [i.name for i in onnx.session.get_inputs()] == ["image", "fellow"]
    batch = np.random.default_rng(0).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    # Without fellows each image is its own, on both runtimes.
    assert np.allclose(onnx.probabilities(batch), grader.probabilities(batch), atol=1e-4)


def test_single_eye_checkpoints_stay_single_eye():
    network, card = load_network(LEGACY / "classification.ckpt")
    assert not card.binocular and not network.binocular
    assert not any(key.startswith("pair_head") for key in network.state_dict())
    values = {"arch": "resnet18", "head": "classification", "image_size": 28,
              "mean": [0.5] * 3, "std": [0.5] * 3}
    assert not ModelCard.from_dict(values, "old card").binocular
    with pytest.raises(DrgradeError, match="'eyes', unknown to drgrade"):
        ModelCard.from_dict(values | {"eyes": "both"}, "a later card")


def test_eyes_both_on_medmnist_is_a_clear_error(shared_data, tmp_path):
    data = shared_data / "retinamnist/retinamnist.npz"
    with pytest.raises(DrgradeError, match="eyes both \\(option --eyes\\).*MedMNIST"):
        GradingDataModule(load_config(None, settings(data, tmp_path, image_size=28,
                                                     eyes="both")))


def test_report_pairs_runs_that_differ_only_in_eyes(tmp_path):
    runs = []
    for name, extra in (("both", {"eyes": "both"}), ("old", {})):  # an old run: no eyes key
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump(
            {"out": str(tmp_path / name), "seed": 0, "pretrained": False, "image_size": 64,
             **extra}))
        runs.append({"name": name, "run": str(tmp_path / name), "state": "done"})
    assert comparison_pairs(pd.DataFrame(runs)) == [("eyes", "old", "both")]


def test_distributed_predict_refuses_a_binocular_model(binocular_run, tmp_path):
    from drgrade.distributed_predict import predict_distributed

    with pytest.raises(DrgradeError, match="binocular model pairs each eye"):
        predict_distributed(binocular_run, [tmp_path], tmp_path / "p.csv", devices=2)
