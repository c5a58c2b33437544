"""Heat maps: on the lesions where the evidence is known, and written beside the CSV."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models import VisionTransformer

from drgrade.cli import main
from drgrade.data.synthetic import synthetic_fundus
from drgrade.errors import DrgradeError
from drgrade.inference.explain import caption, heat_maps, target_layer
from drgrade.inference.grader import Prediction
from drgrade.inference.loader import load_grader
from drgrade.inference.predict import find_images, iter_batches, predict
from drgrade.inference.torch_grader import TorchGrader
from drgrade.model_card import ModelCard
from drgrade.models import build_model
from drgrade.network import GradingNetwork

SIZE = 128


def exudate_grader() -> TorchGrader:
    """A grader whose only evidence for grade 3 is exudate yellow (green well above blue).

    The network is one 1x1 convolution (the feature map Grad-CAM uses), a ReLU, global
    average pooling and a linear layer, so the right heat map is known in advance.
    """
    card = ModelCard(arch="resnet18", head="classification", image_size=SIZE, mean=[0.5] * 3,
                     std=[0.5] * 3, prepare={"size": SIZE, "enhance": "none"})
    network = GradingNetwork.from_card(card)
    yellow, grades = nn.Conv2d(3, 1, 1), nn.Linear(1, 5)
    with torch.no_grad():
        # Inputs are (x - 0.5) / 0.5, so 0.5 * (G - B) is green minus blue in [0, 1] units.
        yellow.weight.copy_(torch.tensor([0.0, 0.5, -0.5]).view(1, 3, 1, 1))
        yellow.bias.fill_(-0.3)
        grades.weight.copy_(torch.tensor([[-1.0], [0], [0], [1], [0]]))
        grades.bias.zero_()
    network.model = nn.Sequential(yellow, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), grades)
    return TorchGrader(network, card, "cpu")


def test_heat_map_lies_on_the_lesions(tmp_path):
    # The same eye without and with lesions (seed 0 draws exudates): the difference is
    # where the lesions are.
    eyes = {}
    for grade in (0, 3):
        path = tmp_path / f"grade{grade}.png"
        synthetic_fundus(grade, np.random.default_rng(0), (800, 600)).save(path)
        eyes[grade] = path
    grader = exudate_grader()
    healthy, diseased = (grader.preprocessor.array(eyes[g]) for g in (0, 3))
    lesions = np.abs(diseased - healthy).sum(0) > 0.3
    [heat_map] = heat_maps(grader, diseased[None], [3])
    assert heat_map.shape == (SIZE, SIZE) and np.isfinite(heat_map).all()
    assert heat_map.min() == 0 and heat_map.max() == pytest.approx(1, abs=1e-3)
    hot = heat_map > 0.5
    assert hot.sum() >= 10
    assert lesions[hot].mean() > 0.95  # the hot pixels are lesion pixels (exudates)
    # Cooler elsewhere: the yellow rim of the optic disc is weaker evidence of the same kind.
    assert heat_map[lesions].mean() > 2 * heat_map[~lesions].mean()


def test_target_layer_is_the_last_spatial_block():
    resnet = build_model("resnet18")
    assert target_layer(resnet, 224) is resnet.layer4
    # At 28 px layer4 is 1x1: the map comes from layer3 (2x2) instead.
    assert target_layer(resnet, 28) is resnet.layer3
    mobilenet = build_model("mobilenet_v3_small")
    assert target_layer(mobilenet, 64) is mobilenet.features
    tiny_vit = VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=1,
                                 hidden_dim=8, mlp_dim=8)
    with pytest.raises(DrgradeError, match="need a convolutional network"):
        target_layer(tiny_vit, 32)


def test_heat_maps_of_a_trained_run(fundus_run, synthetic_photos):
    grader = TorchGrader.from_checkpoint(fundus_run, "cpu")
    assert grader.card.enhance == "ben-graham" and grader.card.prepare_size == 96
    photos = find_images([synthetic_photos])
    [batch] = iter_batches(grader, photos[:3], batch_size=3)
    maps = heat_maps(grader, batch.inputs, [p.grade for p in batch.predictions])
    assert maps.shape == (3, 96, 96) and np.isfinite(maps).all()
    assert all(m.std() > 0.01 for m in maps), "a constant heat map says nothing"
    gradcampp = heat_maps(grader, batch.inputs, [0, 1, 2], method="gradcam++")
    assert gradcampp.shape == maps.shape and np.isfinite(gradcampp).all()
    assert all(p.grad is None for p in grader.network.parameters())


def test_explain_writes_a_png_per_graded_image(fundus_run, photographs, odd_folder, tmp_path):
    grader = TorchGrader.from_checkpoint(fundus_run, "cpu")
    images = sorted(photographs.glob("*.jpg"))[:3] + [odd_folder / "black.png"]
    out, maps = tmp_path / "p.csv", tmp_path / "maps"
    summary = predict(grader, images, out, explain=maps, workers=0, progress=False)
    assert summary.graded == 3 and summary.heat_maps == maps
    table = pd.read_csv(out, keep_default_na=False)
    assert table["heat_map"].tolist() == [str(maps / f"{p.stem}.png") for p in images[:3]] + [""]
    for path in table["heat_map"][:3]:
        with Image.open(path) as sheet:  # photograph beside overlay, 96 px enlarged to 288
            assert sheet.format == "PNG" and sheet.size == (2 * 288 + 4, 288 + 24)
    graded = Prediction("a/b.jpg", 2, probabilities=[0, 0.1, 0.9, 0, 0])
    assert caption(graded, "gradcam++") == "b.jpg: grade 2 (moderate), p = 0.90, Grad-CAM++"
    scored = Prediction("c.png", 3, score=2.71)
    assert caption(scored) == "c.png: grade 3 (severe), Grad-CAM of the score 2.71"


def test_explain_regression_and_onnx_refusal(regression_run, onnx_model, photographs,
                                            tmp_path, capsys):
    maps = tmp_path / "maps"
    assert main(["predict", str(regression_run), str(photographs / "IDRiD_002.jpg"),
                 "--out", str(tmp_path / "r.csv"), "--explain", str(maps),
                 "--explain-method", "gradcam++", "--workers", "0"]) == 0
    assert (maps / "IDRiD_002.png").is_file()
    with pytest.raises(DrgradeError, match="--explain needs the PyTorch checkpoint"):
        predict(load_grader(onnx_model), [photographs], tmp_path / "o.csv", explain=maps)
