"""Loading a checkpoint never runs code from it, and a wrong file gets a clear error."""

import os

import pytest
import torch

from drgrade.errors import DrgradeError
from drgrade.inference.grader import Grader


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
        Grader.from_checkpoint(evil)
    assert not marker.exists()


def test_plain_state_dict_says_what_is_missing(tiny_run, tmp_path):
    state = torch.load(tiny_run / "checkpoints/best.ckpt", weights_only=True)["state_dict"]
    plain = tmp_path / "weights.pt"
    torch.save(state, plain)
    with pytest.raises(DrgradeError, match="no drgrade metadata .* written by `drgrade train`"):
        Grader.from_checkpoint(plain)


def test_checkpoint_from_another_version(tiny_run, tmp_path):
    state = torch.load(tiny_run / "checkpoints/best.ckpt", weights_only=True)
    state["hyper_parameters"]["config"]["mixup"] = 0.2  # an option this version lacks
    del state["hyper_parameters"]["preprocessing"]["mean"]
    other = tmp_path / "other.ckpt"
    torch.save(state, other)
    with pytest.raises(DrgradeError, match="another drgrade version .*mixup.*lacks mean"):
        Grader.from_checkpoint(other)


def test_weights_that_do_not_fit_the_config(tiny_run, tmp_path):
    state = torch.load(tiny_run / "checkpoints/best.ckpt", weights_only=True)
    state["hyper_parameters"]["config"]["arch"] = "resnet34"
    other = tmp_path / "edited.ckpt"
    torch.save(state, other)
    with pytest.raises(DrgradeError, match="weights do not fit the resnet34"):
        Grader.from_checkpoint(other)


@pytest.mark.parametrize("content", [b"", b"hello", b"PK\x03\x04 cut short"])
def test_corrupt_files(tmp_path, content):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(content)
    with pytest.raises(DrgradeError, match="broken.ckpt: not a loadable checkpoint"):
        Grader.from_checkpoint(broken)
