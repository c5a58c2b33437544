"""`drgrade evaluate`: score a trained grader on one split of any dataset, as a paper would.

The data may be the run's own (its prepared folder or npz), another prepared folder, or any
raw layout drgrade reads (an external test set): raw photographs are prepared once into a
cache with exactly the settings the model card records. Only the scored split is needed.
Every evaluation writes predictions.csv (one row per image, unreadable ones with the
reason), metrics.json with 95% bootstrap intervals (patients resampled), and figures.
The baseline is the majority grade of the run's own training data, from its model card.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from tqdm import tqdm

from drgrade.atomic import write_text
from drgrade.data.dataset import ManifestDataset, NpzDataset
from drgrade.data.manifest import EVALUATED_SPLITS, SPLITS, Manifest, carve_validation
from drgrade.data.prepare import SETTINGS_FILE, prepare_dataset
from drgrade.data.sources import read_source
from drgrade.errors import DrgradeError
from drgrade.evaluation.calibration import (
    brier_score,
    expected_calibration_error,
    plot_reliability,
)
from drgrade.evaluation.intervals import RESAMPLES, bootstrap_intervals, patient_level
from drgrade.evaluation.metrics import INTERVAL_METRICS, grading_metrics
from drgrade.grades import NUM_GRADES
from drgrade.inference.torch_grader import TorchGrader
from drgrade.model_card import ModelCard
from drgrade.operating_points import screening_threshold
from drgrade.plots import plot_confusion, plot_referable_roc
from drgrade.preprocessing import EvalTransform
from drgrade.run_folder import (
    CONFIG_FILE,
    EVALUATIONS_DIR,
    METRICS_FILE,
    PREDICTIONS_FILE,
    read_run_config,
    resolve_checkpoint,
    run_of,
)

MISSING_FIX = ("restore them; an evaluation scores every listed image, so a set without them "
               "is another set: prepare it with `drgrade prepare --allow-missing` and "
               "evaluate that folder")
CACHE_DIR = "cache"  # raw photographs prepared for the model, inside the evaluation folder


@dataclass
class Scored:
    """One split's images with the model's outputs: what metrics and predictions.csv need."""

    table: pd.DataFrame  # manifest rows of the scored images (image_id, grade, patient, ...)
    outputs: np.ndarray  # probabilities (N, 5) or scores (N,)
    unreadable: pd.DataFrame  # image_id, grade, patient, eye, reason of images not scored
    network_seconds: float = 0.0  # spent in the network's forward passes (images/s)


def evaluation_folder(run: Path, data: str | None, split: str) -> Path:
    """Where an evaluation goes: the run folder for its own test split (what the report
    reads), else RUN/evaluations/<data>-<split>."""
    if data is None and split == "test":
        return run
    if data is None:
        data = read_run_config(run)["data"]
    label = Path(data).stem if Path(data).is_file() else Path(data).name  # x.npz -> x
    name = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "data"
    return run / EVALUATIONS_DIR / f"{name}-{split}"


def _run_config(run: Path) -> dict | None:
    return read_run_config(run) if (run / CONFIG_FILE).is_file() else None


def _check_prepared(manifest: Manifest, card: ModelCard) -> None:
    """A prepared folder must hold what the model was trained on: same size, same enhance."""
    settings_file = Path(manifest.source) / SETTINGS_FILE
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    for key, expected in (("size", card.prepare_size), ("enhance", card.enhance)):
        if key in settings and settings[key] != expected:
            raise DrgradeError(
                f"{manifest.source}: prepared with {key} {settings[key]!r}, but the model was "
                f"trained on {key} {expected!r}; evaluate the raw photographs instead (they are "
                f"prepared as the model needs), or `drgrade prepare` them with --{key} {expected}"
            )


def _prepare_raw(manifest: Manifest, card: ModelCard, split: str, cache: Path,
                 workers: int | None, progress: bool) -> tuple[Manifest, pd.DataFrame]:
    """The scored split's raw photographs -> a cache prepared as the model card says; the
    unreadable ones. Only that split is prepared (EyePACS' test split alone is 53,576)."""
    # An external set is scored whole: images the layout gives no split count as test.
    manifest.table.loc[manifest.table["split"] == "", "split"] = "test"
    manifest.table = _scored_rows(manifest, split, None, own_data=False)
    # --workers 0 means "load in this process"; preparing needs at least one.
    result = prepare_dataset(manifest, cache, size=card.prepare_size, enhance=card.enhance,
                             workers=None if workers is None else max(workers, 1))
    if progress:
        print(result.summary())
    reasons = {r.image_id: r.reason for r in result.rejected}
    unreadable = manifest.table[manifest.table["image_id"].isin(reasons)].copy()
    unreadable["reason"] = unreadable["image_id"].map(reasons)
    return read_source(cache, "prepared"), unreadable


def _scored_rows(manifest: Manifest, split: str, run_config: dict | None,
                 own_data: bool) -> pd.DataFrame:
    """The manifest rows of the split scored (val carved as training carved it)."""
    table = manifest.table
    if own_data and run_config and split == "val":
        # The same patient-grouped carve as training, so 'val' means the run's validation.
        table = carve_validation(table, run_config["val_fraction"], run_config["seed"])
    rows = table if split == "all" else table[table["split"] == split]
    if rows.empty:
        present = ", ".join(sorted(set(table["split"]) - {""})) or "none"
        raise DrgradeError(f"{manifest.source}: no graded images in the '{split}' split "
                           f"(splits present: {present}); choose one with --split")
    return rows


def _dataset(manifest: Manifest, rows: pd.DataFrame, transform: EvalTransform,
             fellows: bool = False) -> Dataset:
    if manifest.layout != "medmnist":
        # A binocular model's fellow: the same patient's other eye in the scored split.
        return ManifestDataset(rows, transform, fellows=fellows)
    parts = [NpzDataset(manifest.source, split, rows.loc[rows["split"] == split, "grade"]
                        .to_numpy(np.int64), transform)
             for split in SPLITS if (rows["split"] == split).any()]
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def score_split(grader: TorchGrader, data: str, split: str, *, layout: str = "auto",
                labels: str | None = None, images: str | None = None,
                cache: Path | None = None, run_config: dict | None = None,
                own_data: bool = False, tta: bool = False, batch_size: int = 32,
                workers: int | None = None, progress: bool = True) -> Scored:
    """The model's outputs on every image of one split of `data`."""
    card = grader.card
    manifest = read_source(data, layout, labels, images).require_images(fix=MISSING_FIX)
    unreadable = manifest.table.iloc[:0].assign(reason="")
    if manifest.layout == "medmnist":
        if card.prepare is not None:
            raise DrgradeError(f"{data}: MedMNIST arrays are uncropped 28 px images, but the "
                               f"model was trained on fundus photographs prepared at "
                               f"{card.prepare_size} px; evaluate it on photographs")
    elif manifest.layout == "prepared":
        _check_prepared(manifest, card)
    else:
        if cache is None:
            raise DrgradeError(f"{data}: raw photographs need a --cache folder to be prepared in")
        manifest, unreadable = _prepare_raw(manifest, card, split, cache, workers, progress)
    rows = _scored_rows(manifest, split, run_config, own_data)
    unreadable = unreadable[unreadable["split"] == split] if split != "all" else unreadable
    transform = EvalTransform(card.image_size, card.mean, card.std)
    loader = DataLoader(_dataset(manifest, rows, transform, card.binocular),
                        batch_size=batch_size,
                        num_workers=0 if manifest.layout == "medmnist" else (workers or 0))
    outputs, seconds = [], 0.0
    for *inputs, _ in tqdm(loader, desc="evaluating", unit="batch",
                           disable=None if progress else True):
        # Only the network is timed: loading and decoding images is the data's cost.
        start = time.perf_counter()
        outputs.append(grader.outputs(inputs[0].numpy(), tta,
                                      *(fellows.numpy() for fellows in inputs[1:])))
        seconds += time.perf_counter() - start
    return Scored(rows.reset_index(drop=True), np.concatenate(outputs),
                  unreadable.reset_index(drop=True), seconds)


def predictions_table(grader: TorchGrader, scored: Scored) -> pd.DataFrame:
    """predictions.csv: every scored image with its outputs, then the unreadable ones."""
    table = scored.table
    frame = pd.DataFrame({"image": table["image_id"], "patient": table["patient"],
                          "eye": table["eye"], "grade": table["grade"],
                          "predicted": grader.decode(scored.outputs)})
    if grader.is_regression:
        frame["score"] = scored.outputs
    else:
        for g in range(NUM_GRADES):
            frame[f"p{g}"] = scored.outputs[:, g]
    frame["referable_score"] = grader.referable_score(scored.outputs)
    frame["error"] = ""
    bad = scored.unreadable
    failed = pd.DataFrame({"image": bad["image_id"], "patient": bad["patient"],
                           "eye": bad["eye"], "grade": bad["grade"], "error": bad["reason"]})
    return pd.concat([frame, failed], ignore_index=True) if len(failed) else frame


def _baseline(card: ModelCard, run_config: dict | None) -> int:
    """The majority training grade: from the card, or (older checkpoints) the run's data."""
    if card.majority_grade is not None:
        return card.majority_grade
    if run_config is None:
        raise DrgradeError("the checkpoint records no training grades (it predates model "
                           "cards) and has no run folder to read them from; evaluate the run "
                           "folder instead of a copied .ckpt")
    # The training split as training saw it: without the share carved out for validation.
    table = carve_validation(read_source(run_config["data"]).table, run_config["val_fraction"],
                             run_config["seed"])
    counts = np.bincount(table.loc[table["split"] == "train", "grade"], minlength=NUM_GRADES)
    return int(counts.argmax())


def _validation_threshold(grader: TorchGrader, run_config: dict | None, tta: bool,
                          progress: bool) -> float | None:
    """The card's screening threshold, or (older checkpoints) one fitted on the run's val."""
    if grader.card.screening_threshold is not None or run_config is None:
        return grader.card.screening_threshold
    val = score_split(grader, run_config["data"], "val", run_config=run_config, own_data=True,
                      tta=tta, progress=progress)
    return screening_threshold(val.table["grade"].to_numpy(),
                               grader.referable_score(val.outputs), grader.card.screening_target)


def _has_pairs(patients: np.ndarray) -> bool:
    """Whether patient ids group images (else every image is its own patient)."""
    return len(pd.unique(patients)) < len(patients)


def evaluation_metrics(grader: TorchGrader, scored: Scored, majority: int,
                       threshold: float | None, resamples: int = RESAMPLES,
                       seed: int = 0) -> dict:
    """metrics.json: point estimates, intervals, fixed threshold, patients, calibration."""
    truth = scored.table["grade"].to_numpy(np.int64)
    predicted = grader.decode(scored.outputs)
    score = grader.referable_score(scored.outputs)
    patients = scored.table["patient"].astype(str).to_numpy()
    probabilities = None if grader.is_regression else scored.outputs
    metrics = grading_metrics(truth, predicted, score, majority, probabilities)
    data_majority = int(np.bincount(truth, minlength=NUM_GRADES).argmax())
    intervals = bootstrap_intervals(truth, predicted, score, patients, threshold, resamples, seed,
                                    probabilities=probabilities)
    metrics |= {
        "n_unreadable": len(scored.unreadable),
        "data_majority_grade": data_majority,
        "data_majority_accuracy": float(np.mean(truth == data_majority)),
        "intervals": {name: intervals[name].as_dict() for name in INTERVAL_METRICS
                      if name in intervals},  # a regression head has no one-vs-rest AUC
        "bootstrap": {"resamples": resamples, "level": 0.95, "seed": seed,
                      "unit": "patients" if _has_pairs(patients) else "images"},
        "validation_threshold": None, "patient_level": None, "calibration": None,
    }
    if threshold is not None:
        metrics["validation_threshold"] = {
            "threshold": threshold, "target_sensitivity": grader.card.screening_target,
            "sensitivity": intervals["threshold_sensitivity"].as_dict(),
            "specificity": intervals["threshold_specificity"].as_dict()}
    if _has_pairs(patients):
        per_patient = patient_level(truth, predicted, score, patients, threshold, resamples, seed)
        metrics["patient_level"] = {"n_patients": int(len(pd.unique(patients))),
                                    **{k: v.as_dict() for k, v in per_patient.items()}}
    if not grader.is_regression:
        metrics["calibration"] = {
            "expected_calibration_error": expected_calibration_error(scored.outputs, truth),
            "brier_score": brier_score(scored.outputs, truth)}
    return metrics


def _deployment(grader: TorchGrader, checkpoint: Path, scored: Scored) -> dict:
    """What running the model takes: parameters, file size, and its speed in this evaluation
    (outputs are copied back per batch, so a GPU's time is complete)."""
    device = torch.device(grader.device)
    return {
        "parameters": sum(p.numel() for p in grader.network.parameters()),
        "checkpoint_bytes": checkpoint.stat().st_size,
        "images_per_second": len(scored.table) / scored.network_seconds,
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu (torch threads: {torch.get_num_threads()})"),
    }


def evaluate(run_or_checkpoint: Path | str, data: str | None = None, split: str = "test",
             tta: bool = False, out: Path | None = None, progress: bool = True, *,
             layout: str = "auto", labels: str | None = None, images: str | None = None,
             cache: Path | None = None, batch_size: int = 32, workers: int | None = None,
             resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """Score a checkpoint on one split; metrics.json, predictions.csv and figures in OUT."""
    if split not in EVALUATED_SPLITS:
        raise DrgradeError(f"--split {split!r}: choose one of {', '.join(EVALUATED_SPLITS)}")
    checkpoint = resolve_checkpoint(Path(run_or_checkpoint))
    grader = TorchGrader.from_checkpoint(checkpoint)
    run = run_of(checkpoint)
    run_config = _run_config(run)
    own_data = data is None
    if own_data and run_config is None:
        raise DrgradeError(f"{checkpoint}: not inside a run folder, so its training data is "
                           "unknown; give the data to score with --data")
    source = run_config["data"] if own_data else str(data)
    majority = _baseline(grader.card, run_config)  # before any work: it may be unknown
    out = Path(out) if out else evaluation_folder(run, data, split)
    out.mkdir(parents=True, exist_ok=True)
    scored = score_split(grader, source, split, layout=layout, labels=labels, images=images,
                         cache=Path(cache) if cache else out / CACHE_DIR,
                         run_config=run_config, own_data=own_data, tta=tta,
                         batch_size=batch_size, workers=workers, progress=progress)
    threshold = _validation_threshold(grader, run_config, tta, progress)
    metrics = {"checkpoint": str(checkpoint), "data": source, "split": split, "tta": tta,
               **evaluation_metrics(grader, scored, majority, threshold, resamples, seed),
               "deployment": _deployment(grader, checkpoint, scored)}
    write_text(out / PREDICTIONS_FILE, predictions_table(grader, scored).to_csv(index=False))
    write_text(out / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    write_figures(out / "figures", split, metrics, scored, grader)
    return metrics | {"out": str(out)}


def write_figures(folder: Path, split: str, metrics: dict, scored: Scored,
                  grader: TorchGrader) -> None:
    """Confusion matrices (counts, row-normalised), the referable ROC, the reliability diagram."""
    matrix = np.array(metrics["confusion_matrix"])
    plot_confusion(matrix, folder / f"confusion_{split}.png", normalize=False,
                   title=f"{split}: confusion matrix (counts)")
    plot_confusion(matrix, folder / f"confusion_{split}_normalized.png", normalize=True,
                   title=f"{split}: confusion matrix (row-normalised)")
    grades = scored.table["grade"].to_numpy(np.int64)
    score = grader.referable_score(scored.outputs)
    if metrics["referable_auc"] is not None:
        points = {"model's grade": (metrics["referable_sensitivity"],
                                    metrics["referable_specificity"])}
        fixed = metrics["validation_threshold"]
        if fixed is not None:
            points["threshold fixed on validation"] = (fixed["sensitivity"]["estimate"],
                                                       fixed["specificity"]["estimate"])
        read_out = metrics["screening_point"]
        points[f"sensitivity >= {read_out['target_sensitivity']:.2f} on this split"] = (
            read_out["sensitivity"], read_out["specificity"])
        plot_referable_roc(grades, score, folder / f"roc_referable_{split}.png",
                           title=f"{split}: referable DR ROC (AUC {metrics['referable_auc']:.3f})",
                           points=points)
    if not grader.is_regression:
        plot_reliability(scored.outputs, grades, folder / f"reliability_{split}.png",
                         title=split)
