"""Which grader a model file needs: onnxruntime for .onnx, PyTorch for a run or checkpoint."""

from __future__ import annotations

from pathlib import Path

from drgrade.inference.grader import GraderBase


def is_onnx(model: Path | str) -> bool:
    """Whether `model` names an exported ONNX file (else a run folder or a checkpoint)."""
    return Path(model).suffix.lower() == ".onnx"


def load_grader(model: Path | str, device: str | None = None) -> GraderBase:
    """A grader from a run folder, a .ckpt, or an .onnx file written by `drgrade export`.

    Only the PyTorch path imports torch.
    """
    if is_onnx(model):
        from drgrade.inference.onnx_grader import OnnxGrader

        return OnnxGrader(model)
    from drgrade.inference.torch_grader import TorchGrader

    return TorchGrader.from_checkpoint(model, device)
