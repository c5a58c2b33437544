"""What a trained model needs and means, written once and read everywhere.

A `ModelCard` describes a grading network completely for everything after training: the
`drgrade prepare` settings a raw photograph must go through, the network input (size,
normalisation), the architecture and head, the regression cut points, the grade names, the
referable-score threshold chosen on validation, the training grade counts (the baseline
every evaluation reports) and the drgrade version. Training writes it into every checkpoint
and `drgrade export` into the ONNX metadata, from the same object; `from_dict` reads both.

Plain Python: the ONNX runtime path imports it without torch or Lightning.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace

from drgrade import __version__
from drgrade.errors import DrgradeError
from drgrade.grades import GRADE_NAMES, NUM_GRADES, REFERABLE_GRADE
from drgrade.operating_points import DEFAULT_CUT_POINTS, TARGET_SENSITIVITY

HEADS = ("classification", "regression")
CHECKPOINT_KEY = "drgrade_model_card"  # where a checkpoint keeps the card
ONNX_KEY = "drgrade.model_card"  # the ONNX metadata_props key holding the card's JSON


@dataclass(frozen=True)
class ModelCard:
    """Everything a trained grader needs and means besides its weights."""

    arch: str  # torchvision model name
    head: str  # classification (5 logits) or regression (1 score)
    image_size: int  # network input side in pixels
    mean: tuple[float, ...]  # per-channel normalisation of [0, 1] RGB input
    std: tuple[float, ...]
    # `drgrade prepare` settings (prepare.json) of the training data; None for data never
    # prepared (MedMNIST arrays), which is fed at the network size, uncropped.
    prepare: dict | None = None
    cut_points: tuple[float, ...] = DEFAULT_CUT_POINTS  # regression: score -> grade
    # Referable-score threshold reaching TARGET_SENSITIVITY on the run's validation split.
    screening_threshold: float | None = None
    screening_target: float = TARGET_SENSITIVITY
    training_grade_counts: tuple[int, ...] | None = None  # images per grade in train
    grade_names: tuple[str, ...] = GRADE_NAMES
    referable_grade: int = REFERABLE_GRADE
    # Each eye graded from its own and its fellow eye's features (`eyes: both`): the
    # network takes a second input, the same patient's other eye (or the image itself).
    binocular: bool = False
    drgrade_version: str = __version__

    def __post_init__(self) -> None:
        # Tuples, not lists: the card is frozen and hashable in spirit, and JSON gives lists.
        for name in ("mean", "std", "cut_points", "training_grade_counts", "grade_names"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        if self.head not in HEADS:
            raise DrgradeError(f"model card: unknown head {self.head!r} ({', '.join(HEADS)})")

    @property
    def is_regression(self) -> bool:
        return self.head == "regression"

    @property
    def prepare_size(self) -> int:
        """Side of the fundus square a raw photograph is cropped and resized to."""
        return int((self.prepare or {}).get("size", self.image_size))

    @property
    def enhance(self) -> str:
        """The `drgrade prepare --enhance` applied to the training data."""
        return (self.prepare or {}).get("enhance", "none")

    @property
    def majority_grade(self) -> int | None:
        """The most common training grade: the baseline any model must beat."""
        counts = self.training_grade_counts
        return None if not counts else max(range(len(counts)), key=counts.__getitem__)

    def with_values(self, **changes) -> ModelCard:
        """A copy with some values changed (cut points and threshold after validation)."""
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain values (lists, dicts, numbers, strings): what checkpoints and ONNX store."""
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def describe_input(self) -> str:
        """The network input in words (the ONNX metadata's `drgrade.input`)."""
        text = (f"image: float32 (N, 3, {self.image_size}, {self.image_size}) RGB in [0, 1] "
                f"normalised by mean {list(self.mean)} and std {list(self.std)}, after the "
                f"fundus crop to {self.prepare_size} px (enhance: {self.enhance})")
        if self.binocular:
            text += ("; fellow: the same for the same patient's other eye (the image itself "
                     "when it has none)")
        return text

    @classmethod
    def from_dict(cls, values: object, source: str) -> ModelCard:
        """A card read back from a checkpoint or ONNX file; a clear error if it is not one
        this drgrade can read (e.g. written by a later version with more keys)."""
        if not isinstance(values, dict):
            raise DrgradeError(f"{source}: its model card is not a mapping")
        written_by = values.get("drgrade_version", "unknown")
        known = {spec.name for spec in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DrgradeError(
                f"{source}: its model card has {', '.join(map(repr, unknown))}, unknown to "
                f"drgrade {__version__} (it was written by drgrade {written_by}): upgrade "
                "drgrade to read it"
            )
        missing = sorted(name for name in ("arch", "head", "image_size", "mean", "std")
                         if name not in values)
        if missing:
            raise DrgradeError(f"{source}: its model card lacks {', '.join(missing)} "
                               f"(written by drgrade {written_by})")
        card = cls(**values)
        if len(card.cut_points) != NUM_GRADES - 1:
            raise DrgradeError(f"{source}: {len(card.cut_points)} cut points in its model "
                               f"card; a 5-grade model has {NUM_GRADES - 1}")
        return card

    @classmethod
    def from_json(cls, text: str, source: str) -> ModelCard:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise DrgradeError(f"{source}: its model card is not valid JSON ({error})") from None
        return cls.from_dict(values, source)


def card_from_legacy(hparams: dict, cut_points, written_by: str, source: str) -> ModelCard:
    """The card of a checkpoint written before model cards (drgrade 0.1.0 up to stop 7).

    Those kept the whole training config and a preprocessing dict as hyperparameters; only
    the options the card needs are read, so renamed or removed CLI options do not matter.
    """
    config, preprocessing = hparams.get("config"), hparams.get("preprocessing")
    if not isinstance(config, dict) or not isinstance(preprocessing, dict):
        raise DrgradeError(f"{source}: no drgrade metadata (config, preprocessing); a plain "
                           "state_dict cannot say how to feed the model: use a checkpoint "
                           "written by `drgrade train`")
    missing = [key for key in ("image_size", "mean", "std") if key not in preprocessing]
    missing += [key for key in ("arch", "head") if key not in config]
    if missing:
        raise DrgradeError(f"{source}: written by another drgrade version (its metadata lacks "
                           f"{', '.join(missing)}; it records drgrade {written_by}): load it "
                           "with the drgrade version that trained it")
    return ModelCard(
        arch=config["arch"], head=config["head"], image_size=int(preprocessing["image_size"]),
        mean=preprocessing["mean"], std=preprocessing["std"], prepare=preprocessing.get("prepare"),
        cut_points=tuple(float(c) for c in cut_points), drgrade_version=written_by,
    )
