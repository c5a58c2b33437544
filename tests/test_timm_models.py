"""timm models by name (`--arch timm/<name>`): heads, weights offline, heat maps, ONNX, a run."""

import time

import numpy as np
import pytest
import timm
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
from safetensors.torch import save_file
from torch import nn

from drgrade import models
from drgrade.errors import DrgradeError
from drgrade.inference.explain import heat_maps, target_layer
from drgrade.inference.export import export_onnx
from drgrade.inference.torch_grader import TorchGrader
from drgrade.model_card import HEADS, ModelCard
from drgrade.models import build_model, head_outputs
from drgrade.network import GradingNetwork

# The smallest member of each family timm's users reach for.
FAMILIES = {"resnet": "timm/resnet18", "efficientnet": "timm/efficientnet_b0",
            "convnext": "timm/convnext_atto", "vit": "timm/vit_tiny_patch16_224"}
SIZE = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache under HF_HOME in tmp_path, with the hub offline.

    huggingface_hub reads HF_HOME and HF_HUB_OFFLINE when it is imported, so its constants
    are set too: they are what a process started with these variables would have.
    """
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hf-home" / "hub"
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return cache


def outputs_of(model: nn.Module, size: int = SIZE, batch: int = 2) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(batch, 3, size, size))


def grader_of(arch: str, head: str = "classification") -> TorchGrader:
    card = ModelCard(arch=arch, head=head, image_size=SIZE, mean=[0.5] * 3, std=[0.5] * 3)
    return TorchGrader(GradingNetwork.from_card(card), card, "cpu")


# ----------------------------------------------------------------------------- building


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("arch", FAMILIES.values())
def test_build_output_shape(arch, head):
    model = build_model(arch, head=head, image_size=SIZE)
    assert outputs_of(model).shape == (2, head_outputs(head))


def test_vit_takes_the_image_size_given():
    # A ViT's position embeddings fix its input size: built for 32 px, it grades 32 px.
    model = build_model("timm/vit_tiny_patch16_224", head="regression", image_size=32)
    assert model.patch_embed.grid_size == (2, 2)
    assert outputs_of(model, 32).shape == (2, 1)
    # Without a size, timm's standard 224 px model.
    with torch.device("meta"):
        assert build_model("timm/vit_tiny_patch16_224").patch_embed.grid_size == (14, 14)


def test_pretrained_tags_are_names_too():
    model = build_model("timm/resnet18.tv_in1k", head="regression")
    assert model.fc.out_features == 1


@pytest.mark.parametrize("arch, suggestion", [("timm/resnet181", "timm/resnet18"),
                                              ("timm/efficientnet-b0", "timm/efficientnet_b0"),
                                              ("timm/resnet18.no_such_tag", "timm/resnet18")])
def test_unknown_timm_name_suggests_close_names(arch, suggestion):
    with pytest.raises(DrgradeError, match="unknown timm model .* \\(option --arch\\)") as err:
        build_model(arch)
    assert suggestion in str(err.value) and repr(arch) in str(err.value)


def test_timm_only_name_without_the_prefix_gets_it():
    with pytest.raises(DrgradeError, match="timm's convnext_atto is timm/convnext_atto"):
        build_model("convnext_atto")


# ----------------------------------------------------------------------------- weights


def test_weights_file_loads_then_the_head_is_reset(tmp_path):
    standard = timm.create_model("resnet18")
    path = tmp_path / "resnet18-timm.pth"
    torch.save(standard.state_dict(), path)
    model = build_model("timm/resnet18", head="regression", weights_file=path)
    assert torch.equal(model.layer3[0].conv2.weight, standard.layer3[0].conv2.weight)
    assert torch.equal(model.bn1.running_var, standard.bn1.running_var)
    assert model.fc.out_features == 1


def test_vit_weights_file_is_resized_to_the_image_size(tmp_path):
    # The 224 px state_dict, as timm saves it, into a 64 px model: timm's loader resamples
    # the position embeddings. .safetensors, as the Hugging Face hub keeps them, works too.
    standard = timm.create_model("vit_tiny_patch16_224")
    path = tmp_path / "vit.safetensors"
    save_file(standard.state_dict(), path)
    model = build_model("timm/vit_tiny_patch16_224", weights_file=path, image_size=SIZE)
    assert model.pos_embed.shape == (1, 1 + 4 * 4, 192)
    assert torch.equal(model.blocks[5].attn.qkv.weight, standard.blocks[5].attn.qkv.weight)
    assert model.head.out_features == 5


def test_weights_file_of_another_model_or_with_a_grading_head(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(DrgradeError) as err:
        build_model("timm/resnet34", weights_file=path)
    message = str(err.value)
    assert f"weights file (--weights) {path} does not match timm/resnet34" in message
    assert "missing: layer1.2.conv1.weight" in message and "1000-class" in message
    torch.save(build_model("timm/resnet18").state_dict(), path)
    with pytest.raises(DrgradeError, match=r"fc.weight \(5, 512\) \(model: \(1000, 512\)\)"):
        build_model("timm/resnet18", weights_file=path)


def test_pretrained_loads_the_hub_cache_without_network(hub_cache, monkeypatch):
    standard = timm.create_model("resnet18")
    commit = "0" * 40
    repo = hub_cache / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(standard.state_dict(), repo / "snapshots" / commit / "model.safetensors")
    monkeypatch.setattr(models, "hf_hub_download", None)  # any download attempt would fail
    model = build_model("timm/resnet18", pretrained=True, head="regression")
    assert torch.equal(model.conv1.weight, standard.conv1.weight)
    assert model.fc.out_features == 1


def test_pretrained_offline_fails_fast_naming_the_file(hub_cache):
    start = time.monotonic()
    with pytest.raises(DrgradeError) as err:
        build_model("timm/resnet18", pretrained=True)
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert "timm/resnet18.a1_in1k" in message and "model.safetensors" in message
    assert "HF_HUB_OFFLINE is set" in message and "--weights FILE" in message
    assert str(hub_cache) in message
    assert not hub_cache.exists()  # nothing half-made in the cache


def test_pretrained_download_that_fails_says_how_to_go_offline(hub_cache, monkeypatch):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)

    def unreachable(repo, filename, revision=None):
        raise LocalEntryNotFoundError("cannot reach the Hub")

    monkeypatch.setattr(models, "hf_hub_download", unreachable)
    with pytest.raises(DrgradeError, match="cannot download the pretrained weights of "
                                           "timm/resnet18 .* timm/resnet18.a1_in1k") as err:
        build_model("timm/resnet18", pretrained=True)
    assert "Set HF_HUB_OFFLINE=1" in str(err.value) and "--weights FILE" in str(err.value)


def test_pretrained_download_falls_back_to_the_pytorch_file(hub_cache, monkeypatch, tmp_path):
    # A hub repo without model.safetensors: timm's loader then takes pytorch_model.bin.
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    standard = timm.create_model("resnet18")
    torch.save(standard.state_dict(), tmp_path / "pytorch_model.bin")
    asked = []

    def download(repo, filename, revision=None):
        asked.append((repo, filename))
        if filename.endswith(".safetensors"):
            raise EntryNotFoundError(f"{filename} is not in {repo}")
        return str(tmp_path / filename)

    monkeypatch.setattr(models, "hf_hub_download", download)
    model = build_model("timm/resnet18", pretrained=True)
    assert torch.equal(model.conv1.weight, standard.conv1.weight)
    assert asked == [("timm/resnet18.a1_in1k", "model.safetensors"),
                     ("timm/resnet18.a1_in1k", "pytorch_model.bin")]


# ----------------------------------------------------------------------------- heat maps


@pytest.mark.parametrize("family, layer", [("resnet", "layer4"), ("efficientnet", "conv_head"),
                                           ("convnext", "stages"), ("vit", "blocks.11.norm1")])
def test_heat_maps_of_each_family(family, layer):
    grader = grader_of(FAMILIES[family])
    model = grader.network.model
    assert target_layer(model, SIZE) is model.get_submodule(layer)
    inputs = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    maps = heat_maps(grader, inputs, [1, 3])
    assert maps.shape == (2, SIZE, SIZE) and np.isfinite(maps).all()
    assert maps.std() > 0.01, "a constant heat map says nothing"
    assert all(p.grad is None for p in grader.network.parameters())


def test_channels_last_transformers_are_refused_for_heat_maps():
    with torch.device("meta"):  # refused before any forward pass
        swin = timm.create_model("swin_tiny_patch4_window7_224")
    with pytest.raises(DrgradeError, match="need a convolutional network, not SwinTransformer"):
        target_layer(swin, 224)


# ----------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("arch", FAMILIES.values())
def test_onnx_export_matches_pytorch(arch, tmp_path):
    report = export_onnx(grader_of(arch), tmp_path / "model.onnx")
    assert report.max_difference <= 1e-4 and report.path.is_file()


# ----------------------------------------------------------------------------- a run


def test_timm_run_round_trips_through_its_checkpoint(shared_data, tmp_path):
    from drgrade.config import load_config
    from drgrade.fit import train

    config = load_config(None, {
        "data": str(shared_data / "retinamnist/retinamnist.npz"), "out": str(tmp_path / "run"),
        "arch": "timm/resnet18", "image_size": 32, "batch_size": 16, "epochs": 1,
        "max_train_batches": 2, "num_workers": 0, "accelerator": "cpu", "devices": "1",
    })
    run = train(config, progress=False)
    grader = TorchGrader.from_checkpoint(run, "cpu")
    assert grader.card.arch == "timm/resnet18" and grader.card.image_size == 32
    assert isinstance(grader.network.model, timm.models.ResNet)
    prediction = grader.predict_image(shared_data / "idrid-train/fullres/IDRiD_001.jpg")
    assert prediction.grade in range(5) and sum(prediction.probabilities) == pytest.approx(1)
