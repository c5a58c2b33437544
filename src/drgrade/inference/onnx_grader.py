"""A grader running an exported .onnx file in onnxruntime: no torch, no checkpoint.

The file carries its model card in its metadata (`drgrade export`), so it needs nothing
else. onnxruntime's telemetry is off: drgrade/__init__.py sets ORT_DISABLE_TELEMETRY before
any drgrade module imports it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from drgrade.errors import DrgradeError
from drgrade.inference.grader import GraderBase
from drgrade.model_card import ONNX_KEY, ModelCard

INPUT_NAME = "image"
FELLOW_NAME = "fellow"  # a binocular model's second input: each image's fellow eye
LEGACY_PREFIX = "drgrade."  # metadata keys of files exported before model cards


def output_names(head: str) -> list[str]:
    """Names of the graph's outputs: the raw one first, then what `forward` gives."""
    return ["score"] if head == "regression" else ["logits", "probabilities"]


def card_from_metadata(meta: dict[str, str], source: str) -> ModelCard:
    """The model card in an exported file's metadata (or rebuilt from an older export's)."""
    if ONNX_KEY in meta:
        return ModelCard.from_json(meta[ONNX_KEY], source)
    if f"{LEGACY_PREFIX}preprocessing" not in meta:
        raise DrgradeError(f"{source}: no drgrade metadata (model card); export the "
                           "checkpoint with `drgrade export CHECKPOINT --onnx FILE`")
    preprocessing = json.loads(meta[f"{LEGACY_PREFIX}preprocessing"])
    return ModelCard(
        arch=meta.get(f"{LEGACY_PREFIX}arch", "unknown"), head=meta[f"{LEGACY_PREFIX}head"],
        image_size=int(preprocessing["image_size"]), mean=preprocessing["mean"],
        std=preprocessing["std"], prepare=preprocessing.get("prepare"),
        cut_points=json.loads(meta[f"{LEGACY_PREFIX}thresholds"]),
        drgrade_version=meta.get(f"{LEGACY_PREFIX}version", "unknown"))


class OnnxGrader(GraderBase):
    """A grader running an exported .onnx file in onnxruntime."""

    def __init__(self, path: Path | str, threads: int | None = None):
        """`threads`: onnxruntime's intra-op threads (default: one per physical core)."""
        import onnxruntime

        path = Path(path)
        if not path.is_file():
            raise DrgradeError(f"{path}: ONNX model not found")
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), options, providers=onnxruntime.get_available_providers())
        except Exception as error:  # onnxruntime raises its own types for corrupt files
            raise DrgradeError(f"{path}: not a loadable ONNX model ({error})") from None
        self.path = path
        super().__init__(card_from_metadata(self.session.get_modelmeta().custom_metadata_map,
                                            str(path)))
        self.version = self.card.drgrade_version

    def run(self, output: str, batch: np.ndarray, fellows: np.ndarray | None = None
            ) -> np.ndarray:
        """One named output of the graph for a batch (binocular: each image its own fellow
        unless `fellows` are given)."""
        inputs = {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}
        if self.card.binocular:
            inputs[FELLOW_NAME] = (inputs[INPUT_NAME] if fellows is None
                                   else np.ascontiguousarray(fellows, dtype=np.float32))
        return self.session.run([output], inputs)[0]

    def probabilities(self, batch: np.ndarray, fellows: np.ndarray | None = None) -> np.ndarray:
        return self.run(output_names(self.head)[-1], batch, fellows)
