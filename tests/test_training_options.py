"""Training options on real RetinaMNIST at 28 px: losses, optimisers, schedules, early stopping,
augmentation probabilities."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from drgrade.cli import build_parser
from drgrade.config import config_overrides, load_config
from drgrade.data.datamodule import GradingDataModule
from drgrade.data.transforms import _to_normalized_tensor, normalization_stats, train_transform
from drgrade.errors import DrgradeError
from drgrade.fit import train
from drgrade.run_folder import run_state, stopped_early
from drgrade.training import GradingModule, focal_loss, lr_factor


def _config(shared_data, out, **overrides):
    values = {
        "data": str(shared_data / "retinamnist/retinamnist.npz"), "out": str(out),
        "image_size": 28, "batch_size": 32, "epochs": 2, "optimizer": "adamw", "lr": 2e-3,
        "weight_decay": 0.0, "max_train_batches": 3, "num_workers": 0, "accelerator": "cpu",
        "devices": "1",
    }
    return load_config(None, values | overrides)


# --- losses --------------------------------------------------------------------------------


@pytest.mark.parametrize("head, loss, weighted", [
    ("classification", "focal", True),
    ("regression", "smooth_l1", False),
    ("regression", "mae", True),
])
def test_each_loss_trains(shared_data, tmp_path, head, loss, weighted):
    config = _config(shared_data, tmp_path / "run", head=head, loss=loss,
                     class_weights=weighted)
    log = pd.read_csv(train(config, progress=False) / "log.csv")
    # Six steps are too few for a weighted loss to fall reliably; finite and positive it is.
    for column in ("train_loss", "val_loss"):
        assert log[column].map(math.isfinite).all() and (log[column] > 0).all(), column


def test_focal_with_gamma_zero_is_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 5, generator=generator)
    grades = torch.randint(0, 5, (64,), generator=generator)
    weights = torch.tensor([0.5, 1.0, 1.5, 2.0, 0.0])
    for weight in (None, weights):
        for smoothing in (0.0, 0.1):
            expected = F.cross_entropy(logits, grades, weight=weight, label_smoothing=smoothing)
            assert torch.allclose(focal_loss(logits, grades, 0.0, weight, smoothing), expected)
    # gamma > 0 down-weights the images already well classified.
    assert focal_loss(logits, grades, 2.0) < F.cross_entropy(logits, grades)


def test_regression_losses_weight_each_image_by_its_grade(shared_data, tmp_path):
    config = _config(shared_data, tmp_path / "run", head="regression", loss="mse")
    weights = [0.5, 1.0, 2.0, 3.0, 4.0]
    module = GradingModule(config, GradingDataModule(config).model_card(), weights)
    outputs, grades = torch.tensor([0.5, 2.0, 4.0]), torch.tensor([0, 2, 3])
    image_weights = torch.tensor([0.5, 2.0, 3.0])
    expected = (image_weights * (outputs - grades) ** 2).sum() / image_weights.sum()
    assert torch.allclose(module.loss(outputs, grades), expected)
    unweighted = GradingModule(config, module.card)
    assert torch.equal(unweighted.loss(outputs, grades), F.mse_loss(outputs, grades.float()))


@pytest.mark.parametrize("head, loss", [("classification", "mse"), ("regression", "focal")])
def test_a_loss_of_the_other_head_is_refused_naming_both(shared_data, tmp_path, head, loss):
    with pytest.raises(DrgradeError, match=f"loss: '{loss}' does not fit head '{head}'"):
        _config(shared_data, tmp_path, head=head, loss=loss)


def test_auto_loss_is_the_heads_own(shared_data, tmp_path):
    assert _config(shared_data, tmp_path).loss_name() == "cross_entropy"
    assert _config(shared_data, tmp_path, head="regression").loss_name() == "mse"


# --- optimisers and schedules --------------------------------------------------------------


def _factors(shared_data, tmp_path, steps_per_epoch=2, **options):
    config = _config(shared_data, tmp_path, epochs=6, **options)
    factor = lr_factor(config, steps_per_epoch)
    return [round(factor(step), 6) for step in range(0, 6 * steps_per_epoch, steps_per_epoch)]


def test_schedules_give_the_expected_factor_per_epoch(shared_data, tmp_path):
    assert _factors(shared_data, tmp_path, scheduler="multistep", milestones="2,4",
                    step_gamma=0.5) == [1, 1, 0.5, 0.5, 0.25, 0.25]
    assert _factors(shared_data, tmp_path, scheduler="exponential", step_gamma=0.5) == [
        1, 0.5, 0.25, 0.125, 0.0625, 0.03125]
    assert _factors(shared_data, tmp_path, scheduler="step", step_epochs=2,
                    step_gamma=0.1) == [1, 1, 0.1, 0.1, 0.01, 0.01]
    assert _factors(shared_data, tmp_path, scheduler="none") == [1] * 6
    # Warm-up still comes first: 4 steps rising to the peak, then the decays.
    warm = _config(shared_data, tmp_path, epochs=6, scheduler="multistep", milestones=[3],
                   warmup_epochs=2)
    factor = lr_factor(warm, 2)
    assert [factor(step) for step in range(8)] == [0.25, 0.5, 0.75, 1, 1, 1, 0.1, 0.1]


def test_plateau_reduces_on_a_flat_val_kappa_and_adam_is_adam(shared_data, tmp_path):
    config = _config(shared_data, tmp_path, optimizer="adam", scheduler="plateau",
                     plateau_patience=1, step_gamma=0.5, lr=0.1)
    module = GradingModule(config, GradingDataModule(config).model_card())
    setup = module.configure_optimizers()
    optimizer, scheduler = setup["optimizer"], setup["lr_scheduler"]
    assert type(optimizer) is torch.optim.Adam
    assert scheduler["monitor"] == "val_kappa" and scheduler["interval"] == "epoch"
    lrs = []
    for kappa in (0.1, 0.2, 0.2, 0.2, 0.3, 0.3, 0.3):
        scheduler["scheduler"].step(kappa)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025])


@pytest.mark.parametrize("options, message", [
    ({"scheduler": "multistep"}, "milestones: scheduler multistep needs increasing epochs"),
    ({"scheduler": "multistep", "milestones": "5,3"}, "milestones: .* got \\(5, 3\\)"),
    ({"scheduler": "plateau", "warmup_epochs": 1}, "warmup_epochs: not available with"),
    ({"scheduler": "plateau", "step_gamma": 1}, "step_gamma: scheduler plateau needs"),
    ({"milestones": "10,x"}, "milestones: expected an integer, got 'x'"),
    ({"scale_range": "1.1"}, "scale_range: expected low,high"),
    ({"blur_p": 1.5}, "blur_p: a probability in \\[0, 1\\]"),
    ({"blur_kernel": 4}, "blur_kernel: must be an odd number"),
    ({"hue": 0.6}, "hue: at most 0.5"),
])
def test_bad_option_values_name_the_option(shared_data, tmp_path, options, message):
    with pytest.raises(DrgradeError, match=message):
        _config(shared_data, tmp_path, **options)


def test_list_options_from_flags_and_yaml(shared_data, tmp_path):
    data = str(shared_data / "retinamnist/retinamnist.npz")
    parser = build_parser()
    args = parser.parse_args(["train", "--data", data, "--scheduler", "multistep",
                              "--milestones", "10,20", "--loss", "focal",
                              "--early-stopping-patience", "3"])
    config = load_config(None, config_overrides(args))
    assert (config.milestones, config.loss, config.early_stopping_patience) == ((10, 20),
                                                                                "focal", 3)
    assert config.to_dict()["milestones"] == [10, 20]  # YAML-safe in the run folder
    path = tmp_path / "c.yaml"
    path.write_text(f"data: {data}\nscheduler: multistep\nmilestones: [5, 8]\n"
                    "scale_range: [0.9, 1.1]\n")
    config = load_config(path)
    assert config.milestones == (5, 8) and config.scale_range == (0.9, 1.1)
    help_text = parser._subparsers._group_actions[0].choices["train"].format_help()
    for flag in ("--loss", "--focal-gamma", "--milestones", "--plateau-patience",
                 "--early-stopping-min-delta", "--translate", "--blur-p", "--crop-p"):
        assert flag in help_text, flag
    assert "(default: 0.1,2.0)" in help_text


# --- early stopping ------------------------------------------------------------------------


def test_early_stopping_ends_a_plateau_and_the_run_counts_as_trained(shared_data, tmp_path):
    # No gain can exceed a min_delta of 1 (kappa <= 1): every epoch after the first is flat.
    config = _config(shared_data, tmp_path / "run", epochs=5, max_train_batches=2,
                     scheduler="plateau", early_stopping_patience=1,
                     early_stopping_min_delta=1.0)
    run = train(config, progress=False)
    assert pd.read_csv(run / "log.csv")["epoch"].tolist() == [0, 1]
    record = stopped_early(run)
    assert record["epoch"] == 1 and "val_kappa did not improve" in record["reason"]
    assert run_state(run, config.epochs) == "trained"
    assert stopped_early(train(_config(shared_data, tmp_path / "plain", epochs=1),
                               progress=False)) is None


# --- augmentation --------------------------------------------------------------------------


def _today_transform(config) -> v2.Compose:
    """The training transform as it was before per-operation probabilities, for comparison."""
    size = (config.image_size, config.image_size)
    steps: list = [
        v2.RandomResizedCrop(size, scale=(config.crop_scale, 1.0), antialias=True)
        if config.crop_scale < 1 else v2.Resize(size, antialias=True)
    ]
    if config.flips:
        steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    if config.rotation:
        steps.append(v2.RandomRotation(config.rotation))
    if config.color_jitter:
        j = config.color_jitter
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
    return v2.Compose(steps + _to_normalized_tensor(*normalization_stats(config)))


def _image() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _seeded(transform, seed: int) -> torch.Tensor:
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # as GradedImages seeds each image
        return transform(_image())


@pytest.mark.parametrize("options", [
    {}, {"flips": False}, {"rotation": 15.0, "color_jitter": 0.3, "crop_scale": 0.7},
])
def test_default_probabilities_reproduce_todays_transform(shared_data, tmp_path, options):
    config = _config(shared_data, tmp_path, **options)
    for seed in range(6):
        assert torch.equal(_seeded(train_transform(config), seed),
                           _seeded(_today_transform(config), seed))


def test_probabilities_zero_give_the_plain_transform(shared_data, tmp_path):
    plain = _config(shared_data, tmp_path, flips=False)
    off = _config(shared_data, tmp_path, crop_scale=0.5, crop_ratio="0.7,1.3", flip_p=0,
                  rotation=30, rotation_p=0, translate=0.2, scale_range="0.8,1.2", affine_p=0,
                  color_jitter=0.4, hue=0.1, jitter_p=0, grayscale_p=0, blur_p=0, crop_p=0)
    for seed in range(4):
        assert torch.equal(_seeded(train_transform(off), seed),
                           _seeded(train_transform(plain), seed))


def test_probabilities_one_apply_each_new_operation(shared_data, tmp_path):
    plain = _seeded(train_transform(_config(shared_data, tmp_path, flips=False)), 0)
    grey = _seeded(train_transform(_config(shared_data, tmp_path, flips=False,
                                           grayscale_p=1.0)), 0)
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    for options in ({"blur_p": 1.0}, {"translate": 0.3}, {"scale_range": "0.5,0.6"},
                    {"hue": 0.3}, {"brightness": 0.5, "color_jitter": 0.0}):
        changed = _seeded(train_transform(_config(shared_data, tmp_path, flips=False,
                                                  **options)), 0)
        assert changed.shape == plain.shape and not torch.equal(changed, plain), options
