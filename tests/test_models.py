"""Models: heads on several torchvision families, weight loading offline, regression cut points."""

import pathlib
import socket
import time
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from drgrade import models
from drgrade.errors import DrgradeError
from drgrade.model_card import HEADS
from drgrade.models import build_model, expected_weights_file, head_outputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache, and a download that fails as it does offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    calls = []

    def offline(url, dst, *args, **kwargs):
        calls.append((url, socket.getdefaulttimeout()))
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return calls


def outputs_of(model: nn.Module, size: int, batch: int = 2) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(batch, 3, size, size))


# ----------------------------------------------------------------------------- heads


def test_head_outputs():
    assert HEADS == ("classification", "regression")
    assert [head_outputs(h) for h in HEADS] == [5, 1]
    with pytest.raises(DrgradeError, match="--head.*classification, regression"):
        head_outputs("ordinal")


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mobilenet_v3_small"])
def test_build_output_shape(arch, head):
    model = build_model(arch, head=head)
    assert outputs_of(model, 64).shape == (2, head_outputs(head))


@pytest.fixture(scope="module")
def resnet18_models() -> dict[str, nn.Module]:
    return {head: build_model("resnet18", head=head).eval() for head in HEADS}


@pytest.mark.parametrize("size, batch", [(28, 2), (64, 2), (100, 2), (520, 1)])
def test_resnet18_any_input_size(resnet18_models, size, batch):
    # Adaptive pooling: one model serves any photograph size (the lab trains at 512).
    for head, model in resnet18_models.items():
        assert outputs_of(model, size, batch).shape == (batch, head_outputs(head))


@pytest.mark.parametrize("arch, classifier", [
    ("resnet18", "fc"),
    ("mobilenet_v3_small", "classifier.3"),
    ("efficientnet_b0", "classifier.1"),
    ("densenet121", "classifier"),
    ("convnext_tiny", "classifier.2"),
    ("vit_b_16", "heads.head"),
    ("swin_t", "head"),
    ("vgg11", "classifier.6"),
    ("regnet_y_400mf", "fc"),
    ("squeezenet1_1", "classifier.1"),
])
def test_classifier_found_and_replaced_in_each_family(arch, classifier):
    # The meta device builds shapes without memory or initialisation: fast even for ViT.
    with torch.device("meta") if not arch.startswith("regnet") else torch.device("cpu"):
        for head in HEADS:
            module = build_model(arch, head=head).get_submodule(classifier)
            outputs = getattr(module, "out_features", getattr(module, "out_channels", None))
            assert outputs == head_outputs(head)


def test_aux_heads_dropped_so_training_mode_returns_one_tensor():
    model = build_model("googlenet", head="regression").train()
    out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1)


def test_gradients_reach_the_new_head():
    model = build_model("resnet18", head="regression").train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert model.fc.weight.grad is not None and model.conv1.weight.grad is not None


@pytest.mark.parametrize("arch, suggestion", [("resnet181", "resnet18"), ("ResNet50", "resnet50"),
                                              ("efficientnet-b0", "efficientnet_b0")])
def test_unknown_arch_suggests_close_names(arch, suggestion):
    with pytest.raises(DrgradeError, match="--arch") as err:
        build_model(arch)
    assert suggestion in str(err.value) and repr(arch) in str(err.value)


def test_non_classification_model_is_unknown():
    with pytest.raises(DrgradeError, match="unknown model architecture 'fasterrcnn_resnet50_fpn'"):
        build_model("fasterrcnn_resnet50_fpn")


# ----------------------------------------------------------------------------- ImageNet weights


def test_expected_weights_file_follows_torch_home(torch_home, tmp_path):
    path = expected_weights_file("resnet18")
    assert path == tmp_path / "torch-home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert path.name == pathlib.PurePosixPath(
        torchvision.models.ResNet18_Weights.DEFAULT.url).name


def test_pretrained_loads_the_cached_file(torch_home):
    imagenet = torchvision.models.resnet18()
    path = expected_weights_file("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(imagenet.state_dict(), path)
    model = build_model("resnet18", pretrained=True, head="regression")
    assert torch.equal(model.conv1.weight, imagenet.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_mean, imagenet.layer4[1].bn2.running_mean)
    assert model.fc.out_features == 1
    assert torch_home == []  # no download attempted


def test_pretrained_offline_names_the_cache_file_and_weights_option(torch_home):
    start = time.monotonic()
    with pytest.raises(DrgradeError) as err:
        build_model("resnet18", pretrained=True)
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert str(expected_weights_file("resnet18")) in message
    assert "--weights FILE" in message and "Name or service not known" in message
    # The download ran under a socket timeout, which is restored afterwards.
    assert torch_home == [(torchvision.models.ResNet18_Weights.DEFAULT.url,
                           models.NETWORK_TIMEOUT_S)]
    assert socket.getdefaulttimeout() is None
    assert not expected_weights_file("resnet18").exists()


def test_pretrained_real_download_fails_fast_offline(tmp_path, monkeypatch):
    try:
        socket.getaddrinfo("download.pytorch.org", 443)
    except OSError:
        pass
    else:
        pytest.skip("online: this test checks the offline path without downloading 45 MB")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(DrgradeError, match="--weights FILE"):
        build_model("resnet18", pretrained=True)
    assert time.monotonic() - start < 10


def test_corrupt_cached_file_is_named(torch_home):
    path = expected_weights_file("resnet18")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"<html>captive portal</html>")
    with pytest.raises(DrgradeError, match=f"cached ImageNet weights for resnet18 {path}") as err:
        build_model("resnet18", pretrained=True)
    assert "delete it so that it is downloaded again" in str(err.value)


# ----------------------------------------------------------------------------- weights files


def test_weights_file_loads_before_the_head_is_replaced(tmp_path):
    imagenet = torchvision.models.resnet50()
    path = tmp_path / "resnet50-imagenet.pth"
    torch.save(imagenet.state_dict(), path)
    model = build_model("resnet50", head="regression", weights_file=str(path))
    assert torch.equal(model.layer3[0].conv2.weight, imagenet.layer3[0].conv2.weight)
    assert model.fc.out_features == 1


def test_weights_file_wins_over_pretrained(tmp_path, torch_home):
    imagenet = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save(imagenet.state_dict(), path)
    model = build_model("resnet18", pretrained=True, weights_file=path)
    assert torch.equal(model.conv1.weight, imagenet.conv1.weight)
    assert torch_home == []


def test_weights_file_of_another_arch_names_file_and_keys(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(DrgradeError) as err:
        build_model("resnet50", weights_file=path)
    message = str(err.value)
    assert f"weights file (--weights) {path} does not match resnet50" in message
    assert "missing: layer1.0.conv3.weight" in message
    assert "wrong shape: layer1.0.conv1.weight (64, 64, 3, 3) (model: (64, 64, 1, 1))" in message


def test_weights_file_with_a_grading_head_is_refused(tmp_path):
    path = tmp_path / "graded.pth"
    torch.save(build_model("resnet18").state_dict(), path)
    with pytest.raises(DrgradeError, match=r"fc.weight \(5, 512\) \(model: \(1000, 512\)\)"):
        build_model("resnet18", weights_file=path)


def test_weights_file_saved_from_ddp_gets_a_hint(tmp_path):
    path = tmp_path / "ddp.pth"
    state = {f"module.{k}": v for k, v in torchvision.models.resnet18().state_dict().items()}
    torch.save(state, path)
    with pytest.raises(DrgradeError, match="'module.'"):
        build_model("resnet18", weights_file=path)


@pytest.mark.parametrize("content, match", [
    ({"epoch": 3, "model": {"fc.bias": torch.zeros(2)}}, r"holds a dict with keys \['epoch'"),
    ([torch.zeros(1)], "holds a list"),
    ({}, "holds an empty dict"),
])
def test_weights_file_that_is_not_a_state_dict(tmp_path, content, match):
    path = tmp_path / "thing.pth"
    torch.save(content, path)
    with pytest.raises(DrgradeError, match=match) as err:
        build_model("resnet18", weights_file=path)
    assert str(path) in str(err.value)


def test_weights_file_corrupt_or_missing(tmp_path):
    path = tmp_path / "truncated.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DrgradeError, match=f"weights file \\(--weights\\) {path} cannot be read"):
        build_model("resnet18", weights_file=path)
    with pytest.raises(DrgradeError, match="does not exist"):
        build_model("resnet18", weights_file=tmp_path / "absent.pth")


class _Payload:
    """Unpickling this would create a file: torch.load must refuse it."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_weights_file_never_runs_pickled_code(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _Payload(marker)}, path)
    with pytest.raises(DrgradeError, match="cannot be read"):
        build_model("resnet18", weights_file=path)
    assert not marker.exists()
