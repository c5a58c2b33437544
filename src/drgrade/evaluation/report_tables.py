"""The report's tables: each a DataFrame of formatted cells (estimates with their intervals)."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from drgrade.evaluation.metrics import format_interval, format_value
from drgrade.evaluation.report_data import METRICS, Evaluation
from drgrade.grades import GRADE_NAMES


def _shown(metrics: dict, name: str, percent: bool = False) -> str:
    """A metric with its 95% interval; `[n/a]` where metrics.json has none (an older run)."""
    intervals = metrics.get("intervals") or {}
    if name in intervals:
        return format_interval(intervals[name], percent)
    value = metrics.get(name)
    return "n/a" if value is None else f"{format_value(value, percent)} [n/a]"


def _part(metrics: dict, section: str, key: str) -> dict | None:
    """One interval of a section that may be null (e.g. no patients) or absent (older run)."""
    return (metrics.get(section) or {}).get(key)


def _mean_sd(values: pd.Series, percent: bool) -> str:
    values = values.dropna()
    if values.empty:
        return "n/a"
    scale = 100 if percent else 1
    text = f"{scale * values.mean():.2f}" if percent else f"{values.mean():.3f}"
    if len(values) > 1:
        text += f" ± {scale * values.std():.2f}" if percent else f" ± {values.std():.3f}"
    return text + ("%" if percent else "")


def _lab_cell(group: pd.DataFrame, key: str) -> str:
    """One seed: the estimate with its interval; several: mean ± sd over the seeds."""
    if len(group) == 1:
        return _shown(group["metrics"].iloc[0], key, key == "accuracy")
    return _mean_sd(group[key], key == "accuracy")


def lab_table(runs: pd.DataFrame, image_size: int) -> pd.DataFrame:
    """Rows: architectures; columns: pretrained / scratch; cells: acc, kappa, AUC per seed(s)."""
    done = runs[(runs["state"] == "done") & (runs["image_size"] == image_size)]
    table = {}
    for (arch, init), group in done.groupby(["arch", "init"]):
        table.setdefault(arch, {})[init] = "<br>".join(
            f"{label}: {_lab_cell(group, key)}"
            for key, label in METRICS.items()) + f"<br>(n={len(group)})"
    frame = pd.DataFrame(table).T
    columns = [c for c in ("pretrained", "scratch") if c in frame.columns]
    return frame[columns].fillna("not run").rename_axis("architecture")


def _images(metrics: dict) -> str:
    unreadable = metrics.get("n_unreadable")
    return f"{metrics['n_images']:,}" + (f" (+{unreadable:,} unreadable)" if unreadable else "")


def _threshold(metrics: dict) -> str:
    fixed = metrics.get("validation_threshold")
    if not fixed:
        return "n/a"
    return f"{fixed['threshold']:.4g} (sens. >= {fixed['target_sensitivity']:.2f} on val)"


Columns = dict[str, Callable[[dict], object]]
HEADLINE: Columns = {
    "data": lambda m: f"`{m.get('data', 'n/a')}`",
    "images": _images,
    "accuracy": lambda m: _shown(m, "accuracy", percent=True),
    "baseline: training majority": lambda m: format_value(m["majority_accuracy"], percent=True),
    "baseline: this data's majority": lambda m: format_value(m.get("data_majority_accuracy"),
                                                     percent=True),
    "kappa": lambda m: _shown(m, "quadratic_weighted_kappa"),
    "macro F1": lambda m: _shown(m, "macro_f1"),
    "referable AUC": lambda m: _shown(m, "referable_auc"),
    "one-vs-rest AUC": lambda m: _shown(m, "one_vs_rest_auc"),
}
REFERABLE: Columns = {
    "prevalence": lambda m: format_value(m["referable_prevalence"], percent=True),
    "sensitivity (model's grade)": lambda m: _shown(m, "referable_sensitivity"),
    "specificity (model's grade)": lambda m: _shown(m, "referable_specificity"),
    "threshold fixed on validation": _threshold,
    "sensitivity (that threshold)": lambda m: format_interval(_part(m, "validation_threshold",
                                                         "sensitivity")),
    "specificity (that threshold)": lambda m: format_interval(_part(m, "validation_threshold",
                                                         "specificity")),
}
PATIENTS: Columns = {
    "patients": lambda m: f"{m['patient_level']['n_patients']:,}",
    **{label: (lambda m, key=key: format_interval(_part(m, "patient_level", key)))
       for key, label in (("referable_sensitivity", "sensitivity (model's grade)"),
                          ("referable_specificity", "specificity (model's grade)"),
                          ("referable_auc", "AUC"),
                          ("threshold_sensitivity", "sensitivity (validation threshold)"),
                          ("threshold_specificity", "specificity (validation threshold)"))},
}
RECALL: Columns = {f"recall {g} {name}": (lambda m, key=f"{g} {name}":
                                          format_value(m["per_class"][key]["recall"]))
                   for g, name in enumerate(GRADE_NAMES)}
CALIBRATION: Columns = {
    "expected calibration error": lambda m: format_value(_part(m, "calibration",
                                                       "expected_calibration_error")),
    "Brier score": lambda m: format_value(_part(m, "calibration", "brier_score")),
}


def evaluation_table(evaluations: list[Evaluation], columns: Columns) -> pd.DataFrame:
    """One row per evaluation (run, evaluation), one column per entry of `columns`."""
    return pd.DataFrame([{"run": e.run, "evaluation": e.name,
                          **{label: value(e.metrics) for label, value in columns.items()}}
                         for e in evaluations])


def resolution_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean test METRICS per architecture/initialisation (rows) and (metric, size) (columns)."""
    done = runs[runs["state"] == "done"]
    means = done.groupby(["arch", "init", "image_size"])[list(METRICS)].mean()
    return means.unstack("image_size")


def number_table(frame: pd.DataFrame) -> str:
    return frame.to_markdown(floatfmt=".3f")


def markdown_table(frame: pd.DataFrame) -> str:
    """Cells already formatted: tabulate must not reread `3.2e-05` or `0.410` as numbers."""
    return frame.to_markdown(index=False, disable_numparse=True)
