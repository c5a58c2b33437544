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

# The losses each head trains with; its first is the one `loss: auto` picks.
HEAD_LOSSES = {"classification": ("cross_entropy", "focal"),
               "regression": ("mse", "smooth_l1", "mae")}


def option(default, help: str, choices: tuple | None = None):  # noqa: A002 - mirrors argparse
    """A config field with its help line (and allowed values) for `drgrade train --help`."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    """One experiment: data, model, optimisation, engine. A YAML file holds a subset."""

    data: str = option("", "prepared folder (`drgrade prepare`) or MedMNIST npz")
    out: str = option("runs/train", "run folder: config, log, checkpoints, metrics")
    arch: str = option("resnet18", "torchvision model name (resnet18, resnet50, ...) or "
                                   "timm/<name> (timm/efficientnet_b0, timm/convnext_tiny, ...)")
    pretrained: bool = option(False, "start from ImageNet weights (torchvision's cache, or the "
                                     "Hugging Face hub cache for timm models)")
    weights: str | None = option(None, "local ImageNet state_dict file instead of the cache")
    head: str = option("classification", "output head", HEADS)
    eyes: str = option(
        "single", "single: grade each eye alone; both: each eye from its own and its fellow "
                  "eye's features (same patient, other eye, from the manifest's eye column)",
        ("single", "both"))
    image_size: int = option(512, "side of the square network input in pixels")
    batch_size: int = option(16, "images per batch (per device)")
    epochs: int = option(10, "training epochs")
    loss: str = option(
        "auto", "training loss (auto: cross_entropy for classification, mse for regression)",
        ("auto", *(name for names in HEAD_LOSSES.values() for name in names)),
    )
    focal_gamma: float = option(2.0, "focal loss focusing parameter (0 = cross-entropy)")
    optimizer: str = option("sgd", "optimiser", ("sgd", "adam", "adamw"))
    lr: float = option(1e-3, "peak learning rate")
    momentum: float = option(0.9, "SGD momentum")
    nesterov: bool = option(False, "Nesterov momentum (SGD)")
    weight_decay: float = option(5e-4, "weight decay")
    scheduler: str = option(
        "cosine", "learning-rate schedule (plateau: ReduceLROnPlateau on val_kappa)",
        ("cosine", "step", "multistep", "exponential", "plateau", "none"),
    )
    step_epochs: int = option(3, "step schedule: epochs between decays")
    step_gamma: float = option(0.1, "decay factor: per decay (step, multistep), per epoch "
                                    "(exponential), per reduction (plateau)")
    milestones: tuple[int, ...] = option((), "multistep schedule: epochs at which to decay, "
                                             "e.g. 10,20")
    plateau_patience: int = option(5, "plateau schedule: epochs without a better val_kappa "
                                      "before the learning rate drops")
    warmup_epochs: float = option(0.0, "linear warm-up length in epochs (not with plateau)")
    label_smoothing: float = option(0.0, "cross-entropy (and focal) label smoothing")
    class_weights: bool = option(False, "weight the loss by inverse grade frequency (regression "
                                        "losses: each image by its grade's weight)")
    early_stopping_patience: int | None = option(
        None, "stop after this many epochs without a better val_kappa (unset: never)")
    early_stopping_min_delta: float = option(
        0.0, "early stopping: the val_kappa gain that counts as better")
    sampler: str = option(
        "instance", "training sampler: natural order, balanced grades, or balanced->natural",
        ("instance", "class-balanced", "progressive"),
    )
    normalization: str = option(
        "auto", "pixel scaling: lab ([-1,1]), imagenet, auto (imagenet if pretrained)",
        ("auto", "lab", "imagenet"),
    )
    flips: bool = option(True, "random horizontal and vertical flips")
    flip_p: float = option(0.5, "probability of each flip (horizontal, vertical)")
    rotation: float = option(0.0, "random rotation range in degrees")
    rotation_p: float = option(1.0, "probability of the random rotation")
    translate: float = option(0.0, "random shift range, a fraction of the side (affine)")
    scale_range: tuple[float, ...] | None = option(
        None, "random zoom range low,high, e.g. 0.9,1.1 (affine; unset: none)")
    affine_p: float = option(1.0, "probability of the random shift and zoom")
    color_jitter: float = option(0.0, "brightness/contrast/saturation jitter strength")
    brightness: float | None = option(None, "brightness jitter (unset: color_jitter)")
    contrast: float | None = option(None, "contrast jitter (unset: color_jitter)")
    saturation: float | None = option(None, "saturation jitter (unset: color_jitter)")
    hue: float = option(0.0, "hue jitter, at most 0.5")
    jitter_p: float = option(1.0, "probability of the colour jitter")
    grayscale_p: float = option(0.0, "probability of turning an image grey")
    blur_p: float = option(0.0, "probability of a Gaussian blur")
    blur_kernel: int = option(7, "Gaussian blur kernel size in pixels (odd)")
    blur_sigma: tuple[float, ...] = option((0.1, 2.0), "Gaussian blur sigma range low,high")
    crop_scale: float = option(1.0, "random resized crop minimum area (1.0 = off)")
    crop_ratio: tuple[float, ...] = option((3 / 4, 4 / 3),
                                           "random resized crop aspect-ratio range low,high")
    crop_p: float = option(1.0, "probability of the random resized crop (else a plain resize)")
    val_fraction: float = option(0.1, "share of train carved out as val (patient-grouped) "
                                      "when the data has no val split")
    num_workers: int = option(-1, "DataLoader workers (-1: min(4, cores - 1))")
    seed: int = option(0, "seed of all randomness")
    gradient_clip_val: float | None = option(
        None, "clip the gradient norm to this value (a cure for diverging runs)")
    precision: str = option("32-true", "Lightning precision: 32-true, bf16-mixed, 16-mixed")
    logger: str = option(
        "auto", "training logs beside log.csv: tensorboard (RUN/tensorboard/), wandb (needs "
                "`pip install wandb`; offline in RUN/wandb/, nothing sent unless WANDB_MODE is "
                "set), csv (log.csv only), auto (tensorboard if installed, else csv)",
        ("auto", "csv", "tensorboard", "wandb"))
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
                     "rotation", "color_jitter", "focal_gamma", "plateau_patience",
                     "early_stopping_patience", "early_stopping_min_delta", "translate",
                     "brightness", "contrast", "saturation", "hue"):
            if (getattr(self, name) or 0) < 0:
                raise DrgradeError(f"{name}: must not be negative, got {getattr(self, name)}")
        for name in ("flip_p", "rotation_p", "affine_p", "jitter_p", "grayscale_p", "blur_p",
                     "crop_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise DrgradeError(f"{name}: a probability in [0, 1], got {getattr(self, name)}")
        for name in ("scale_range", "blur_sigma", "crop_ratio"):
            pair = getattr(self, name)
            if pair is not None and not (len(pair) == 2 and 0 < pair[0] <= pair[1]):
                raise DrgradeError(f"{name}: expected low,high with 0 < low <= high, got "
                                   f"{','.join(map(str, pair))}")
        if self.image_size < 16:
            raise DrgradeError(f"image_size: {self.image_size} px is too small (at least 16)")
        if not 0 < self.crop_scale <= 1:
            raise DrgradeError(f"crop_scale: must be in (0, 1], got {self.crop_scale}")
        if self.hue > 0.5:
            raise DrgradeError(f"hue: at most 0.5 (half the colour wheel), got {self.hue}")
        if self.translate > 1:
            raise DrgradeError(f"translate: a fraction of the side in [0, 1], got {self.translate}")
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            raise DrgradeError(f"blur_kernel: must be an odd number of pixels, got "
                               f"{self.blur_kernel}")
        self._validate_optimisation()
        if not self.data:
            raise DrgradeError("data: no training data given (--data or `data:` in the config)")
        if not Path(self.data).exists():
            hint = ("; get it with `drgrade download retinamnist --out DIR`"
                    if Path(self.data).name.startswith("retinamnist") else "")
            raise DrgradeError(f"data: {self.data} does not exist{hint}")
        return self

    def _validate_optimisation(self) -> None:
        """Loss against head, and the schedule's own options."""
        losses = HEAD_LOSSES[self.head]
        if self.loss != "auto" and self.loss not in losses:
            raise DrgradeError(f"loss: {self.loss!r} does not fit head {self.head!r}; give "
                               f"--loss {' or '.join(losses)} or choose the other --head")
        if self.scheduler == "multistep":
            steps = self.milestones
            if not steps or steps[0] < 1 or list(steps) != sorted(set(steps)):
                raise DrgradeError("milestones: scheduler multistep needs increasing epochs "
                                   f"from 1, e.g. --milestones 10,20; got {steps or 'none'}")
        if self.scheduler == "plateau":
            if self.warmup_epochs:
                # ReduceLROnPlateau scales the learning rate it finds; a warm-up factor
                # applied on top would undo its reductions every step.
                raise DrgradeError("warmup_epochs: not available with scheduler plateau; "
                                   "set it to 0 or choose another --scheduler")
            if not 0 < self.step_gamma < 1:
                raise DrgradeError(f"step_gamma: scheduler plateau needs a factor in (0, 1), "
                                   f"got {self.step_gamma}")

    def loss_name(self) -> str:
        """The loss to train with: `loss`, or the head's own (its first) when auto."""
        return HEAD_LOSSES[self.head][0] if self.loss == "auto" else self.loss

    def to_dict(self) -> dict:
        """Plain values (lists for tuples), as written to the run folder and into checkpoints."""
        return {name: list(value) if isinstance(value, tuple) else value
                for name, value in asdict(self).items()}


@functools.cache
def _type_hints() -> dict[str, type]:
    return typing.get_type_hints(TrainConfig)


def field_type(spec) -> type:
    """The concrete type of a field, `int | None` -> int."""
    hint = _type_hints()[spec.name]
    if isinstance(hint, types.UnionType):
        return next(t for t in typing.get_args(hint) if t is not type(None))
    return hint


def coerce_value(name: str, value, kind: type, where: str):
    """`value` (from YAML or a flag) as `kind`; a DrgradeError naming `where` + `name`."""
    if value is None:
        return None
    if typing.get_origin(kind) is tuple:
        # A YAML list (or one value), or the flag's comma-separated text ("--milestones 10,20").
        if isinstance(value, str):
            items = value.split(",")
        else:
            items = value if isinstance(value, list | tuple) else [value]
        item_kind = typing.get_args(kind)[0]
        return tuple(coerce_value(name, item.strip() if isinstance(item, str) else item, item_kind,
                             where) for item in items if item != "")
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
        values = read_yaml_file(Path(path))
        for key in values:
            if key not in known:
                near = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise DrgradeError(f"{path}: unknown key {key!r}{hint}")
        values = {k: coerce_value(k, v, field_type(known[k]), f"{path}: ")
                  for k, v in values.items()}
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = coerce_value(key, value, field_type(known[key]), "--")
    return TrainConfig(**values).validate()


def read_yaml_file(path: Path, kind: str = "config",
                   keys: set[str] | None = None) -> dict:
    """A YAML file holding a mapping (a config, an experiment, a search); with `keys`, an
    error naming any top-level key not among them."""
    path = Path(path)
    if not path.is_file():
        raise DrgradeError(f"{path}: {kind} file not found")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise DrgradeError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(values, dict):
        raise DrgradeError(f"{path}: expected a mapping of option: value")
    unknown = set(values) - keys if keys is not None else set()
    if unknown:
        raise DrgradeError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; "
                           f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} has "
                           f"{', '.join(sorted(keys))}")
    return values


def add_config_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One --flag per config field (but `skip`); defaults are None so only given flags count."""
    for spec in fields(TrainConfig):
        if spec.name in skip:
            continue
        flag = "--" + spec.name.replace("_", "-")
        kind = field_type(spec)
        default = spec.default if spec.default is not MISSING else None
        if isinstance(default, tuple):
            # Shown as typed on the command line: 0.1,2.0 (or none for an empty list).
            default = ",".join(map(str, default)) or "none"
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
