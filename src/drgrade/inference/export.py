"""`drgrade export`: a grader as one ONNX file that carries its own model card.

The graph maps a batch of network inputs (N, 3, S, S) to logits and probabilities (N, 5)
or regression scores (N,), with a dynamic batch axis. Everything else a raw photograph
needs (fundus crop size, enhancement, normalisation, cut points, screening threshold) is
the model card in the file's metadata, so `drgrade predict model.onnx PHOTOS...` needs the
.onnx file alone and onnxruntime, not the checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from drgrade import __version__
from drgrade.atomic import partial_path, write_error
from drgrade.errors import DrgradeError
from drgrade.inference.onnx_grader import FELLOW_NAME, INPUT_NAME, OnnxGrader, output_names
from drgrade.inference.torch_grader import TorchGrader
from drgrade.model_card import ONNX_KEY, ModelCard

TOLERANCE = 1e-4  # largest |onnxruntime - PyTorch| difference of logits or scores accepted
CHECK_BATCH = 8  # photographs (or random inputs) compared after export


class _Outputs(nn.Module):
    """The exported computation: logits and probabilities, or the regression score."""

    def __init__(self, grader: TorchGrader):
        super().__init__()
        self.network = grader.network

    def forward(self, image: torch.Tensor, fellow: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        outputs = self.network(image, fellow)
        if self.network.is_regression:
            return outputs
        return outputs, self.network.probabilities(outputs)


def metadata(card: ModelCard) -> dict[str, str]:
    """What predict needs besides the graph, as ONNX metadata_props (strings)."""
    return {
        ONNX_KEY: card.to_json(),
        "drgrade.version": __version__,
        "drgrade.input": card.describe_input(),
        "drgrade.output": (
            "score: (N,) grade score; grade = number of cut points below it"
            if card.is_regression else
            "logits: (N, 5); probabilities: (N, 5) per grade, softmax of logits"),
    }


@dataclass
class ExportReport:
    """Where the model went and how closely onnxruntime reproduced PyTorch."""

    path: Path
    output: str  # the output compared: logits or score
    max_difference: float
    checked: str  # what the outputs were compared on

    def __str__(self) -> str:
        return (f"exported {self.path}\nmax |onnxruntime - PyTorch| of the {self.output} = "
                f"{self.max_difference:.2e} on {self.checked} (tolerance {TOLERANCE:.0e})")


def check_inputs(grader: TorchGrader, images: Sequence[Path]) -> tuple[np.ndarray, str]:
    """Network inputs to compare on: the first usable photographs, else seeded noise."""
    arrays, names = [], []
    for path in images:
        try:
            arrays.append(grader.preprocessor.array(path))
            names.append(path)
        except DrgradeError:
            continue  # a rejected photograph says nothing about the export
        if len(arrays) == CHECK_BATCH:
            break
    if arrays:
        return np.stack(arrays), f"{len(arrays)} photographs ({names[0].parent})"
    size = grader.card.image_size
    noise = np.random.default_rng(0).standard_normal((CHECK_BATCH, 3, size, size))
    return noise.astype(np.float32), f"{CHECK_BATCH} random inputs"


def _check_target(out: Path) -> None:
    if out.suffix != ".onnx":
        raise DrgradeError(f"--onnx {out}: the file name must end in .onnx")
    if out.is_dir():
        raise DrgradeError(f"--onnx {out}: is a folder; give a file name ending in .onnx")
    if not out.parent.is_dir():
        raise DrgradeError(f"--onnx {out}: the folder {out.parent} does not exist")


def export_onnx(grader: TorchGrader, out: Path | str, check_images: Sequence[Path] = ()
                ) -> ExportReport:
    """Write the grader to `out` as ONNX, checked against PyTorch before it gets that name."""
    out = Path(out)
    _check_target(out)
    if grader.device != "cpu":
        # Compared on the CPU too: a GPU's TF32 convolutions differ by more than TOLERANCE.
        raise ValueError("export a grader on the CPU: TorchGrader.from_checkpoint(..., "
                         "device='cpu')")
    size = grader.card.image_size
    # A batch of 2 when tracing, so the batch axis cannot be specialised to 1.
    # A binocular model takes each image's fellow eye too, with the same batch axis; one
    # tensor per input, as one passed twice would be traced as a single input.
    inputs = [INPUT_NAME, FELLOW_NAME] if grader.card.binocular else [INPUT_NAME]
    examples = tuple(torch.zeros(2, 3, size, size) for _ in inputs)
    batch = torch.export.Dim("batch")
    try:
        program = torch.onnx.export(
            _Outputs(grader).eval(), examples, input_names=inputs,
            output_names=output_names(grader.head),
            dynamic_shapes={name: {0: batch} for name in inputs},
            dynamo=True, verbose=False,
        )
    except Exception as error:  # torch.export names the operation it could not capture
        raise DrgradeError(f"cannot export {grader.card.arch} to ONNX: {error}") from None
    program.model.metadata_props.update(metadata(grader.card))
    partial = partial_path(out)
    try:
        program.save(partial, external_data=False)  # one self-contained file
        report = _compare(grader, partial, out, check_images)
        os.replace(partial, out)
    except OSError as error:
        raise write_error(out, error) from None
    finally:
        partial.unlink(missing_ok=True)
    return report


def _compare(grader: TorchGrader, written: Path, out: Path, check_images: Sequence[Path]
             ) -> ExportReport:
    """onnxruntime on the written file against PyTorch; an error if they differ."""
    inputs, checked = check_inputs(grader, check_images)
    # A binocular model is checked with other images as fellows (the batch reversed), so
    # that the fellow input is seen to matter.
    fellows = np.ascontiguousarray(inputs[::-1]) if grader.card.binocular else None
    with torch.no_grad():
        # Logits, not probabilities: softmax hides errors.
        expected = grader.network(grader.tensor(inputs), None if fellows is None
                                  else grader.tensor(fellows)).numpy()
    output = output_names(grader.head)[0]
    actual = OnnxGrader(written).run(output, inputs, fellows)
    difference = float(np.abs(actual - expected).max())
    if not difference <= TOLERANCE:  # also catches NaN
        raise DrgradeError(
            f"{out}: onnxruntime's {output} differ from PyTorch's by {difference:.2e} "
            f"(> {TOLERANCE:.0e}) on {checked}; the file was removed, nothing is left at "
            f"{out}. Try another torch/onnxruntime version"
        )
    return ExportReport(out, output, difference, checked)
