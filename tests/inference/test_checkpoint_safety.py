"""Loading a checkpoint never runs code from it, and a wrong file gets a clear error."""

import os

import pytest
import torch

from drgrade.errors import DrgradeError
from drgrade.inference.torch_grader import TorchGrader


class _Payload:
    """Unpickling this would create the folder `marker`: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"config": _Payload(str(marker))}}, evil)
    with pytest.raises(DrgradeError, match=r"refused: .* could run code .*GLOBAL posix\.mkdir"):
        TorchGrader.from_checkpoint(evil)
    assert not marker.exists()


def test_plain_state_dict_says_what_is_missing(tiny_run, tmp_path):
    state = torch.load(tiny_run / "checkpoints/best.ckpt", weights_only=True)["state_dict"]
    plain = tmp_path / "weights.pt"
    torch.save(state, plain)
    with pytest.raises(DrgradeError, match="no drgrade metadata .* written by `drgrade train`"):
        TorchGrader.from_checkpoint(plain)


def test_checkpoint_from_a_later_version(tiny_run, tmp_path):
    state = torch.load(tiny_run / "checkpoints/best.ckpt", weights_only=True)
    state["drgrade_model_card"]["mixup"] = 0.2  # a card entry this version does not know
    state["drgrade_model_card"]["drgrade_version"] = "9.0.0"
    other = tmp_path / "other.ckpt"
    torch.save(state, other)
    with pytest.raises(DrgradeError, match=r"'mixup', unknown to drgrade .*written by drgrade "
                                           r"9\.0\.0"):
        TorchGrader.from_checkpoint(other)


def test_options_renamed_since_training_do_not_matter(tiny_run, tmp_path):
    # Checkpoints keep the model card and the model hyperparameters, not the CLI options.
    state = torch.load(tiny_run / "checkpoints/best.ckpt", weights_only=True)
    assert "config" not in state["hyper_parameters"]
    assert TorchGrader.from_checkpoint(tiny_run).card.arch == "resnet18"


def test_weights_that_do_not_fit_the_config(tiny_run, tmp_path):
    state = torch.load(tiny_run / "checkpoints/best.ckpt", weights_only=True)
    state["drgrade_model_card"]["arch"] = "resnet34"
    other = tmp_path / "edited.ckpt"
    torch.save(state, other)
    with pytest.raises(DrgradeError, match="weights do not fit the resnet34"):
        TorchGrader.from_checkpoint(other)


@pytest.mark.parametrize("content", [b"", b"hello", b"PK\x03\x04 cut short"])
def test_corrupt_files(tmp_path, content):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(content)
    with pytest.raises(DrgradeError, match="broken.ckpt: not a loadable checkpoint"):
        TorchGrader.from_checkpoint(broken)
