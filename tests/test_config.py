"""Configs: YAML + flags, every bad value named by its key."""

from pathlib import Path

import pytest

from drgrade.cli import build_parser
from drgrade.config import TrainConfig, config_overrides, load_config
from drgrade.errors import DrgradeError


@pytest.fixture()
def data(tmp_path):
    npz = tmp_path / "data.npz"
    npz.write_bytes(b"")
    return str(npz)


def test_yaml_then_flags(tmp_path, data):
    path = tmp_path / "c.yaml"
    path.write_text(f"data: {data}\nlr: 1e-3\nepochs: 4\npretrained: yes\n")
    config = load_config(path, {"epochs": "7", "head": None})
    assert config.lr == 0.001 and config.epochs == 7 and config.pretrained is True
    assert config.head == TrainConfig.head  # not given -> default


def test_every_shipped_config_parses(data):
    from pathlib import Path

    configs = sorted(Path(__file__).parents[1].glob("configs/*.yaml"))
    configs += sorted(Path(__file__).parents[1].glob("configs/lab3/*.yaml"))
    assert len(configs) >= 6
    for path in configs:
        assert load_config(path, {"data": data}).arch.startswith("resnet")


@pytest.mark.parametrize("text, message", [
    ("lrr: 0.1", "unknown key 'lrr'; did you mean 'lr'?"),
    ("lr: -0.1", "lr: must be positive"),
    ("lr: fast", "lr: expected a number, got 'fast'"),
    ("epochs: 2.5", "epochs: expected an integer"),
    ("image_size: 8", "image_size: 8 px is too small"),
    ("head: ordinal", "head: 'ordinal' is not one of classification, regression"),
    ("pretrained: maybe", "pretrained: expected true or false"),
    ("- a\n- b", "expected a mapping"),
])
def test_bad_yaml_values_name_the_key(tmp_path, data, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(f"{text}\n" if text.startswith("-") else f"data: {data}\n{text}\n")
    with pytest.raises(DrgradeError, match=message.replace("?", r"\?")):
        load_config(path)


def test_missing_data_and_config(tmp_path):
    with pytest.raises(DrgradeError, match="data: no training data given"):
        load_config(None, {})
    with pytest.raises(DrgradeError, match="nowhere does not exist$"):
        load_config(None, {"data": str(tmp_path / "nowhere")})
    # The shipped RetinaMNIST config before the download: say how to get the file.
    with pytest.raises(DrgradeError, match="does not exist; get it with `drgrade download "
                                           "retinamnist --out DIR`"):
        load_config(Path(__file__).parents[1] / "configs" / "retinamnist.yaml",
                    {"data": str(tmp_path / "data" / "retinamnist.npz")})
    with pytest.raises(DrgradeError, match="config file not found"):
        load_config(tmp_path / "none.yaml")


def test_flags_cover_every_option_with_help(data):
    parser = build_parser()
    args = parser.parse_args(["train", "--data", data, "--lr", "0.5", "--no-flips",
                              "--batch-size", "3"])
    config = load_config(None, config_overrides(args))
    assert (config.lr, config.flips, config.batch_size) == (0.5, False, 3)
    help_text = parser._subparsers._group_actions[0].choices["train"].format_help()
    for flag in ("--weight-decay", "--sampler", "--track-test", "--num-nodes", "--precision"):
        assert flag in help_text
    assert "(default: 0.001)" in help_text
