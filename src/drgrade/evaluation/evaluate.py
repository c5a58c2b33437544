"""Score a trained grader on one split of a dataset and write metrics.json."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader
from tqdm import tqdm

from drgrade.checkpoint import load_network
from drgrade.config import TrainConfig
from drgrade.data.datamodule import GradingDataModule
from drgrade.errors import DrgradeError
from drgrade.evaluation.metrics import grading_metrics
from drgrade.inference.torch_grader import TorchGrader
from drgrade.plots import plot_confusion, plot_referable_roc
from drgrade.run_folder import METRICS_FILE, read_run_config, resolve_checkpoint, run_of


def predict_outputs(grader: TorchGrader, loader: DataLoader, tta: bool = False,
                    progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-grade probabilities (or regression scores) and true grades for every image.

    The network runs as `drgrade predict` runs it (`TorchGrader.outputs`); with `tta`,
    outputs are averaged over the image and its horizontal, vertical and double flips.
    """
    outputs, grades = [], []
    for images, batch_grades in tqdm(loader, desc="evaluating", disable=not progress):
        outputs.append(grader.outputs(images.numpy(), tta))
        grades.append(batch_grades.numpy())
    return np.concatenate(outputs), np.concatenate(grades)


def decode(grader: TorchGrader, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicted grades and the referable score from `predict_outputs`' outputs."""
    return grader.decode(outputs), grader.referable_score(outputs)


def evaluate(run_or_checkpoint: Path, data: str | None = None, split: str = "test",
             tta: bool = False, out: Path | None = None, progress: bool = True) -> dict:
    """Metrics of a checkpoint on one split, written to OUT/metrics.json."""
    checkpoint = resolve_checkpoint(run_or_checkpoint)
    grader = TorchGrader(*load_network(checkpoint))
    config = replace(TrainConfig(**read_run_config(run_of(checkpoint))), track_test=False)
    if data:
        config.data = str(data)
    datamodule = GradingDataModule(config)
    if not (datamodule.table["split"] == split).any():
        raise DrgradeError(f"{config.data}: no '{split}' images to evaluate")
    loader = datamodule.loader(datamodule.dataset(split))
    outputs, grades = predict_outputs(grader, loader, tta, progress)
    predicted, referable_score = decode(grader, outputs)
    majority = int(datamodule.class_counts().argmax())
    metrics = {"checkpoint": str(checkpoint), "data": config.data, "split": split, "tta": tta,
               **grading_metrics(grades, predicted, referable_score, majority)}
    out = Path(out) if out else run_of(checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    write_figures(out / "figures", split, metrics, grades, referable_score)
    return metrics


def write_figures(folder: Path, split: str, metrics: dict, grades: np.ndarray,
                  referable_score: np.ndarray) -> None:
    """Confusion matrices (counts and row-normalised) and the referable-DR ROC as PNG."""
    matrix = np.array(metrics["confusion_matrix"])
    plot_confusion(matrix, folder / f"confusion_{split}.png", normalize=False,
                   title=f"{split}: confusion matrix (counts)")
    plot_confusion(matrix, folder / f"confusion_{split}_normalized.png", normalize=True,
                   title=f"{split}: confusion matrix (row-normalised)")
    if metrics["referable_auc"] is not None:
        screening = metrics["screening_point"]
        points = {"model's grade": (metrics["referable_sensitivity"],
                                    metrics["referable_specificity"]),
                  f"sensitivity >= {screening['target_sensitivity']:.2f}":
                  (screening["sensitivity"], screening["specificity"])}
        plot_referable_roc(grades, referable_score, folder / f"roc_referable_{split}.png",
                           title=f"{split}: referable DR ROC (AUC {metrics['referable_auc']:.3f})",
                           points=points)
