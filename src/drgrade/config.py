"""Every training option defined once: YAML file, then CLI flags, validated with clear errors."""

from __future__ import annotations

import argparse
import difflib
import functools
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import yaml

from drgrade.errors import DrgradeError
from drgrade.model_card import HEADS


def option(default, help: str, choices: tuple | None = None):  # noqa: A002 - mirrors argparse
    """A config field with its help line (and allowed values) for `drgrade train --help`."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    """One experiment: data, model, optimisation, engine. A YAML file holds a subset."""

    data: str = option("", "prepared folder (`drgrade prepare`) or MedMNIST npz")
    out: str = option("runs/train", "run folder: config, log, checkpoints, metrics")
    arch: str = option("resnet18", "torchvision model name (resnet18, resnet50, ...)")
    pretrained: bool = option(False, "start from ImageNet weights (torchvision cache)")
    weights: str | None = option(None, "local ImageNet state_dict file instead of the cache")
    head: str = option("classification", "output head", HEADS)
    image_size: int = option(512, "side of the square network input in pixels")
    batch_size: int = option(16, "images per batch (per device)")
    epochs: int = option(10, "training epochs")
    optimizer: str = option("sgd", "optimiser", ("sgd", "adamw"))
    lr: float = option(1e-3, "peak learning rate")
    momentum: float = option(0.9, "SGD momentum")
    nesterov: bool = option(False, "Nesterov momentum (SGD)")
    weight_decay: float = option(5e-4, "weight decay")
    scheduler: str = option("cosine", "learning-rate schedule", ("cosine", "step", "none"))
    step_epochs: int = option(3, "step schedule: epochs between decays")
    step_gamma: float = option(0.1, "step schedule: decay factor")
    warmup_epochs: float = option(0.0, "linear warm-up length in epochs")
    label_smoothing: float = option(0.0, "cross-entropy label smoothing")
    class_weights: bool = option(False, "weight cross-entropy by inverse grade frequency")
    sampler: str = option(
        "instance", "training sampler: natural order, balanced grades, or balanced->natural",
        ("instance", "class-balanced", "progressive"),
    )
    normalization: str = option(
        "auto", "pixel scaling: lab ([-1,1]), imagenet, auto (imagenet if pretrained)",
        ("auto", "lab", "imagenet"),
    )
    flips: bool = option(True, "random horizontal and vertical flips")
    rotation: float = option(0.0, "random rotation range in degrees")
    color_jitter: float = option(0.0, "brightness/contrast/saturation jitter strength")
    crop_scale: float = option(1.0, "random resized crop minimum area (1.0 = off)")
    val_fraction: float = option(0.1, "share of train carved out as val (patient-grouped) "
                                      "when the data has no val split")
    num_workers: int = option(-1, "DataLoader workers (-1: min(4, cores - 1))")
    seed: int = option(0, "seed of all randomness")
    gradient_clip_val: float | None = option(
        None, "clip the gradient norm to this value (a cure for diverging runs)")
    precision: str = option("32-true", "Lightning precision: 32-true, bf16-mixed, 16-mixed")
    accelerator: str = option("auto", "cpu, gpu, auto")
    devices: str = option("auto", "devices per node: a count, a list, or auto")
    num_nodes: int = option(1, "machines for multi-node DDP")
    strategy: str = option("auto", "Lightning strategy: auto, ddp, ddp_spawn, ...")
    track_test: bool = option(False, "also evaluate the test split every epoch (curves only; "
                                     "never used for model selection)")
    deterministic: bool = option(False, "deterministic algorithms (bit-exact reruns, slower)")
    channels_last: bool = option(True, "channels-last memory format (faster on CPU and GPU)")
    max_train_batches: int | None = option(None, "stop each epoch after this many batches")

    def validate(self) -> TrainConfig:
        """Check values; one error naming the first bad key and what it accepts."""
        for spec in fields(self):
            choices = spec.metadata["choices"]
            if choices and getattr(self, spec.name) not in choices:
                raise DrgradeError(
                    f"{spec.name}: {getattr(self, spec.name)!r} is not one of {', '.join(choices)}"
                )
        positive = ("image_size", "batch_size", "epochs", "lr", "num_nodes", "step_epochs")
        for name in positive:
            if getattr(self, name) <= 0:
                raise DrgradeError(f"{name}: must be positive, got {getattr(self, name)}")
        for name in ("weight_decay", "momentum", "warmup_epochs", "label_smoothing",
                     "rotation", "color_jitter"):
            if getattr(self, name) < 0:
                raise DrgradeError(f"{name}: must not be negative, got {getattr(self, name)}")
        if self.image_size < 16:
            raise DrgradeError(f"image_size: {self.image_size} px is too small (at least 16)")
        if not 0 < self.crop_scale <= 1:
            raise DrgradeError(f"crop_scale: must be in (0, 1], got {self.crop_scale}")
        if not self.data:
            raise DrgradeError("data: no training data given (--data or `data:` in the config)")
        if not Path(self.data).exists():
            hint = ("; get it with `drgrade download retinamnist --out DIR`"
                    if Path(self.data).name.startswith("retinamnist") else "")
            raise DrgradeError(f"data: {self.data} does not exist{hint}")
        return self

    def to_dict(self) -> dict:
        """Plain values, as written to the run folder and into checkpoints."""
        return asdict(self)


@functools.cache
def _type_hints() -> dict[str, type]:
    return typing.get_type_hints(TrainConfig)


def _field_type(spec) -> type:
    """The concrete type of a field, `int | None` -> int."""
    hint = _type_hints()[spec.name]
    if isinstance(hint, types.UnionType):
        return next(t for t in typing.get_args(hint) if t is not type(None))
    return hint


def _coerce(name: str, value, kind: type, where: str):
    if value is None:
        return None
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("true", "yes", "1", "on"):
            return True
        if text in ("false", "no", "0", "off"):
            return False
        raise DrgradeError(f"{where}{name}: expected true or false, got {value!r}")
    try:
        if kind is int:
            # int(3.5) would silently truncate; int('16') and YAML's 16 are both fine.
            number = float(value)
            if not number.is_integer():
                raise ValueError(value)
            return int(number)
        # YAML 1.1 reads 1e-3 as a string, so floats are converted here.
        return kind(value)
    except (TypeError, ValueError):
        label = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
        raise DrgradeError(f"{where}{name}: expected {label}, got {value!r}") from None


def load_config(path: Path | str | None = None, overrides: dict | None = None) -> TrainConfig:
    """A validated config from an optional YAML file and flag overrides (None = not given)."""
    known = {spec.name: spec for spec in fields(TrainConfig)}
    values: dict = {}
    if path is not None:
        values = _read_yaml(Path(path))
        for key in values:
            if key not in known:
                near = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise DrgradeError(f"{path}: unknown key {key!r}{hint}")
        values = {k: _coerce(k, v, _field_type(known[k]), f"{path}: ") for k, v in values.items()}
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _coerce(key, value, _field_type(known[key]), "--")
    return TrainConfig(**values).validate()


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise DrgradeError(f"{path}: config file not found")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise DrgradeError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(values, dict):
        raise DrgradeError(f"{path}: expected a mapping of option: value")
    return values


def add_config_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One --flag per config field (but `skip`); defaults are None so only given flags count."""
    for spec in fields(TrainConfig):
        if spec.name in skip:
            continue
        flag = "--" + spec.name.replace("_", "-")
        kind = _field_type(spec)
        default = spec.default if spec.default is not MISSING else None
        help_text = spec.metadata["help"] + ("" if default is None else f" (default: {default})")
        if kind is bool:
            parser.add_argument(flag, dest=spec.name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=spec.name, type=str, default=None,
                                choices=spec.metadata["choices"], help=help_text)


def config_overrides(args: argparse.Namespace) -> dict:
    """The config values given as flags (None where not given)."""
    return {spec.name: getattr(args, spec.name, None) for spec in fields(TrainConfig)}
