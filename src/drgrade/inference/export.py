"""`drgrade export`: a grader as one ONNX file that carries its own preprocessing.

The graph maps a batch of network inputs (N, 3, S, S) to per-grade probabilities (N, 5) or
regression scores (N,), with a dynamic batch axis. Everything else a raw photograph needs
(fundus crop size, enhancement, normalisation, cut points) is in the model's metadata, so
`drgrade predict model.onnx PHOTOS...` needs the .onnx file alone and onnxruntime, not the
checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from drgrade import __version__
from drgrade.errors import DrgradeError
from drgrade.grades import GRADE_NAMES
from drgrade.inference.grader import Grader, GraderBase

INPUT_NAME = "image"
TOLERANCE = 1e-4  # largest |onnxruntime - PyTorch| difference of logits or scores accepted
CHECK_BATCH = 8  # photographs (or random inputs) compared after export
META = "drgrade."  # prefix of the metadata keys


class _Outputs(nn.Module):
    """The exported computation: logits and probabilities, or the regression score."""

    def __init__(self, grader: Grader):
        super().__init__()
        self.module = grader.module

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        outputs = self.module(image)
        if self.module.is_regression:
            return outputs
        return outputs, self.module.probabilities(outputs)


def output_names(head: str) -> list[str]:
    """Names of the graph's outputs: the raw one first, then what `Grader.forward` gives."""
    return ["score"] if head == "regression" else ["logits", "probabilities"]


def metadata(grader: Grader) -> dict[str, str]:
    """What predict needs besides the graph, as ONNX metadata_props (strings)."""
    settings = grader.settings
    return {
        f"{META}version": __version__,
        f"{META}arch": grader.module.config.arch,
        f"{META}head": grader.head,
        f"{META}thresholds": json.dumps(grader.thresholds.tolist()),
        f"{META}grade_names": json.dumps(list(GRADE_NAMES)),
        f"{META}preprocessing": json.dumps(grader.preprocessing),
        f"{META}input": (f"{INPUT_NAME}: float32 (N, 3, {settings.image_size}, "
                         f"{settings.image_size}) RGB in [0, 1] normalised by mean "
                         f"{list(settings.mean)} and std {list(settings.std)}, after the fundus "
                         f"crop to {settings.prepare_size} px (enhance: {settings.enhance})"),
        f"{META}output": (
            "score: (N,) grade score; grade = number of thresholds below it"
            if grader.is_regression else
            "logits: (N, 5); probabilities: (N, 5) per grade, softmax of logits"),
    }


class OnnxGrader(GraderBase):
    """A grader running an exported .onnx file in onnxruntime; needs no checkpoint."""

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
        meta = self.session.get_modelmeta().custom_metadata_map
        if f"{META}preprocessing" not in meta:
            raise DrgradeError(f"{path}: no drgrade metadata (preprocessing, head); export "
                               "the checkpoint with `drgrade export CHECKPOINT --onnx FILE`")
        self.path = path
        self.version = meta[f"{META}version"]
        super().__init__(json.loads(meta[f"{META}preprocessing"]), meta[f"{META}head"],
                         torch.tensor(json.loads(meta[f"{META}thresholds"])))

    def run(self, output: str, batch: torch.Tensor) -> torch.Tensor:
        """One named output of the graph for a batch."""
        values = self.session.run([output], {INPUT_NAME: batch.detach().cpu().numpy()})[0]
        return torch.from_numpy(values)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.run(output_names(self.head)[-1], batch)


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


def check_inputs(grader: GraderBase, images: Sequence[Path]) -> tuple[torch.Tensor, str]:
    """Network inputs to compare on: the first usable photographs, else seeded noise."""
    tensors, names = [], []
    for path in images:
        try:
            tensors.append(grader.settings.tensor(path))
            names.append(path)
        except DrgradeError:
            continue  # a rejected photograph says nothing about the export
        if len(tensors) == CHECK_BATCH:
            break
    if tensors:
        return torch.stack(tensors), f"{len(tensors)} photographs ({names[0].parent})"
    size = grader.settings.image_size
    noise = torch.randn(CHECK_BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    return noise, f"{CHECK_BATCH} random inputs"


def export_onnx(grader: Grader, out: Path | str, check_images: Sequence[Path] = ()
                ) -> ExportReport:
    """Write the grader to `out` as ONNX and check onnxruntime against PyTorch on it."""
    out = Path(out)
    if out.suffix != ".onnx":
        raise DrgradeError(f"--onnx {out}: the file name must end in .onnx")
    if grader.device != "cpu":
        # Compared on the CPU too: a GPU's TF32 convolutions differ by more than TOLERANCE.
        raise ValueError("export a grader on the CPU: Grader.from_checkpoint(..., device='cpu')")
    size = grader.settings.image_size
    # A batch of 2 when tracing, so the batch axis cannot be specialised to 1.
    example = torch.zeros(2, 3, size, size)
    try:
        program = torch.onnx.export(
            _Outputs(grader).eval(), (example,), input_names=[INPUT_NAME],
            output_names=output_names(grader.head),
            dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
            dynamo=True, verbose=False,
        )
    except Exception as error:  # torch.export names the operation it could not capture
        raise DrgradeError(f"cannot export {grader.module.config.arch} to ONNX: {error}") from None
    program.model.metadata_props.update(metadata(grader))
    out.parent.mkdir(parents=True, exist_ok=True)
    program.save(out, external_data=False)  # one self-contained file
    inputs, checked = check_inputs(grader, check_images)
    with torch.no_grad():
        expected = grader.module(inputs)  # logits, not probabilities: softmax hides errors
    output = output_names(grader.head)[0]
    actual = OnnxGrader(out).run(output, inputs)
    difference = float((actual - expected).abs().max())
    if not difference <= TOLERANCE:  # also catches NaN
        out.unlink()
        raise DrgradeError(
            f"{out}: onnxruntime's {output} differ from PyTorch's by {difference:.2e} "
            f"(> {TOLERANCE:.0e}) "
            f"on {checked}; the file was removed. Try another torch/onnxruntime version"
        )
    return ExportReport(out, output, difference, checked)
