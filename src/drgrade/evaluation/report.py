"""The experiment report: the lab's table, comparisons, curves, calibration, confusion matrices.

Everything is read from run folders (config.yaml, environment.json, log.csv, and each
evaluation folder's metrics.json and predictions.csv), so every number can be traced to the
command and config that produced it. Run folders evaluated before drgrade wrote intervals
and per-image predictions still report, with n/a for what they lack.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import markdown
import pandas as pd
import yaml

from drgrade.atomic import write_text
from drgrade.errors import DrgradeError
from drgrade.evaluation.compare import (
    LABELS,
    Comparison,
    compare_evaluations,
    difference_text,
    evaluation_folder,
    evaluations_of,
)
from drgrade.evaluation.intervals import RESAMPLES
from drgrade.evaluation.metrics import format_interval, format_value
from drgrade.grades import GRADE_NAMES
from drgrade.plots import plot_comparison, plot_differences, plot_resolution
from drgrade.run_folder import (
    CONFIG_FILE,
    ENVIRONMENT_FILE,
    EVALUATIONS_DIR,
    LOG_FILE,
    METRICS_FILE,
    PLAN_FILE,
    read_run_config,
    run_state,
)

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
FIGURES = "report_figures"
METRICS = {"accuracy": "test accuracy", "quadratic_weighted_kappa": "test kappa",
           "referable_auc": "referable AUC"}
# Options a comparison pairs runs on: B - A is pretrained - scratch, larger - smaller size,
# both eyes - single eye.
PAIRED = {"pretrained": "pretrained vs scratch", "image_size": "resolution",
          "eyes": "both eyes vs single eye"}
EYES = ("single", "both")  # the order of `eyes` in a pair: A single, B both
COMPARED = {key: LABELS[key] for key in ("quadratic_weighted_kappa", "referable_auc")}


def _init(pretrained: bool) -> str:
    return "pretrained" if pretrained else "scratch"


def collect_runs(runs_dir: Path) -> pd.DataFrame:
    """One row per run (or planned cell): settings, state, chosen epoch, test metrics."""
    runs_dir = Path(runs_dir)
    plan_file = runs_dir / PLAN_FILE
    if plan_file.is_file():
        names = yaml.safe_load(plan_file.read_text())["cells"]
    else:
        names = sorted(p.name for p in runs_dir.iterdir() if (p / CONFIG_FILE).is_file())
    if not names:
        raise DrgradeError(f"{runs_dir}: no runs found (folders with {CONFIG_FILE})")
    runs = pd.DataFrame([_run_row(runs_dir / name) for name in names])
    # Missing cells leave gaps that would turn sizes into floats ("28.0 px").
    for column in ("image_size", "seed", "epochs"):
        if column in runs:
            runs[column] = runs[column].astype("Int64")
    return runs


def _run_row(run: Path) -> dict:
    row: dict = {"name": run.name, "run": str(run)}
    if not (run / CONFIG_FILE).is_file():
        return row | {"state": "missing"}
    config = read_run_config(run)
    row |= {key: config[key] for key in ("arch", "pretrained", "image_size", "seed", "head",
                                         "epochs", "track_test")}
    row["init"] = _init(config["pretrained"])
    row["state"] = run_state(run, config["epochs"])
    if (run / ENVIRONMENT_FILE).is_file():
        row["command"] = json.loads((run / ENVIRONMENT_FILE).read_text())["command"]
    if (run / LOG_FILE).is_file():
        log = pd.read_csv(run / LOG_FILE)
        row["epochs_done"] = len(log)
        # best.ckpt is the first epoch with the highest validation kappa.
        row["chosen_epoch"] = int(log.loc[log["val_kappa"].idxmax(), "epoch"]) + 1
    if (run / METRICS_FILE).is_file():
        metrics = json.loads((run / METRICS_FILE).read_text())
        row |= {key: metrics[key] for key in METRICS}
        row["metrics"] = metrics
    return row


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


@dataclass(frozen=True)
class Evaluation:
    """One evaluation folder of a finished run: its own split, or RUN/evaluations/NAME."""

    run: str
    name: str
    folder: Path
    metrics: dict


def collect_evaluations(runs: pd.DataFrame) -> list[Evaluation]:
    """Every finished run's own evaluation, each followed by its evaluations on other data."""
    evaluations = []
    for _, run in runs[runs["state"] == "done"].iterrows():
        own = run["metrics"]
        evaluations.append(Evaluation(run["name"], f"{own.get('split', 'test')} (own data)",
                                      Path(run["run"]), own))
        evaluations += [Evaluation(run["name"], folder.name, folder,
                                   json.loads((folder / METRICS_FILE).read_text()))
                        for folder in evaluations_of(run["run"])]
    return evaluations


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


def comparison_pairs(runs: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(option, A, B) for finished runs whose configs differ in one PAIRED option only.

    B is the pretrained run of a pretrained/scratch pair, the next larger size of a
    resolution pair, the binocular run of an eyes pair; every other option (arch, seed,
    epochs, ...) is equal.
    """
    done = runs[runs["state"] == "done"]
    # Runs from before the `eyes` option were single-eye runs.
    configs = {name: {"eyes": EYES[0]} | read_run_config(Path(run))
               for name, run in zip(done["name"], done["run"], strict=True)}
    pairs = []
    for option in PAIRED:
        groups: dict[str, list[str]] = {}
        for name, config in configs.items():
            rest = {key: value for key, value in config.items() if key not in ("out", option)}
            groups.setdefault(json.dumps(rest, sort_keys=True, default=str), []).append(name)
        for names in groups.values():
            ordered = sorted(names, key=lambda name: _rank(option, configs[name][option]))
            pairs += [(option, a, b) for a, b in itertools.pairwise(ordered)
                      if configs[a][option] != configs[b][option]]
    return pairs


def _rank(option: str, value):
    """Where a value of a PAIRED option sorts: A before B."""
    return EYES.index(value) if option == "eyes" else value


def comparisons(runs: pd.DataFrame, resamples: int = RESAMPLES,
                seed: int = 0) -> list[tuple[str, str, str, Comparison | str]]:
    """Each pair of `comparison_pairs` with its paired comparison, or why there is none."""
    folders = dict(zip(runs["name"], runs["run"], strict=True))
    result = []
    for option, a, b in comparison_pairs(runs):
        try:
            outcome = compare_evaluations(evaluation_folder(folders[a]),
                                          evaluation_folder(folders[b]), resamples, seed)
        except DrgradeError as error:
            # One pair that cannot be compared (an older run) must not stop the report.
            outcome = str(error).splitlines()[0]
        result.append((option, a, b, outcome))
    return result


def curve_data(runs: pd.DataFrame, arch: str, image_size: int) -> pd.DataFrame:
    """Per-epoch train/test accuracy of one architecture, by initialisation (seed-averaged)."""
    frames = []
    chosen = runs[(runs["arch"] == arch) & (runs["image_size"] == image_size)
                  & runs["state"].isin(["done", "trained"])]
    for _, run in chosen.iterrows():
        log = pd.read_csv(Path(run["run"]) / LOG_FILE)
        columns = ["epoch", "train_accuracy"] + (["test_accuracy"] if "test_accuracy" in log
                                                 else [])
        frames.append(log[columns].assign(init=run["init"]))
    if not frames:
        return pd.DataFrame(columns=["init", "epoch", "train_accuracy", "test_accuracy"])
    return pd.concat(frames).groupby(["init", "epoch"], as_index=False).mean()


def _md_table(frame: pd.DataFrame) -> str:
    return frame.to_markdown(floatfmt=".3f")


def markdown_table(frame: pd.DataFrame) -> str:
    """Cells already formatted: tabulate must not reread `3.2e-05` or `0.410` as numbers."""
    return frame.to_markdown(index=False, disable_numparse=True)


def write_report(runs_dir: Path | str, resamples: int = RESAMPLES,
                 seed: int = 0) -> tuple[Path, Path]:
    """Write RUNS_DIR/report.md and a self-contained report.html; their paths.

    `resamples` and `seed`: the paired bootstrap of the Comparisons section.
    """
    runs_dir = Path(runs_dir)
    runs = collect_runs(runs_dir)
    figures = runs_dir / FIGURES
    done = runs[runs["state"] == "done"] if "arch" in runs else runs.iloc[:0]
    lines = [f"# drgrade report: {runs_dir.name}", ""]
    lines += _status_section(runs)
    if done.empty:
        lines += ["No run has finished yet: nothing to tabulate."]
    else:
        # Largest first: the lab's table is at its full resolution.
        sizes = sorted((int(size) for size in done["image_size"].unique()), reverse=True)
        evaluations = collect_evaluations(runs)
        lines += _lab_section(done, sizes, evaluations)
        lines += _evaluations_section(evaluations)
        lines += _comparisons_section(runs, runs_dir, figures, resamples, seed)
        lines += _curves_section(runs, done, sizes, figures)
        if len(sizes) > 1:
            lines += _resolution_section(runs, figures)
        lines += _calibration_section(runs, evaluations, runs_dir)
        lines += _confusion_section(done)
    lines += _provenance_section(runs, runs_dir)
    md_path = runs_dir / REPORT_MD
    write_text(md_path, "\n".join(lines) + "\n")
    html_path = runs_dir / REPORT_HTML
    write_text(html_path, markdown_to_html(md_path, runs_dir))
    return md_path, html_path


def _bootstrap_note(evaluations: list[Evaluation]) -> str:
    """How the intervals were computed, as the metrics.json files record it."""
    settings = sorted({f"{b['resamples']:,} resamples of {b['unit']}, seed {b['seed']}"
                       for e in evaluations if (b := e.metrics.get("bootstrap"))})
    note = ("Intervals are 95% bootstrap percentile intervals from each metrics.json ("
            + "; ".join(settings) + ")." if settings else "")
    if any("intervals" not in e.metrics for e in evaluations):
        note += (" `[n/a]`: evaluated before drgrade computed intervals; rerun "
                 "`drgrade evaluate RUN` for them.")
    return note.strip()


def _lab_section(done: pd.DataFrame, sizes: list[int],
                 evaluations: list[Evaluation]) -> list[str]:
    first = done["metrics"].iloc[0]
    own = ""
    if "data_majority_accuracy" in first:
        own = (f" (the test split's own most common grade, {first['data_majority_grade']}, "
               f"scores {format_value(first['data_majority_accuracy'], percent=True)})")
    lines = [
        "## Test results at the epoch chosen on validation", "",
        f"**Majority-class baseline** (always the most common training grade, "
        f"{first['majority_grade']}): "
        f"{format_value(first['majority_accuracy'], percent=True)} test accuracy on "
        f"{first['n_images']:,} images{own}. Accuracy alone says little; kappa and "
        "referable AUC stand beside it.", "",
        "One seed: the estimate with its 95% interval. Several seeds: mean ± sd over seeds "
        "(each run's interval is in the tables below). The checkpoint of each run is the "
        "epoch with the best validation kappa; the test split never chose anything. "
        + _bootstrap_note(evaluations), "",
    ]
    for size in sizes:
        lines += [f"### {size} px", "", _md_table(lab_table(done, size)), ""]
    return lines


def _evaluations_section(evaluations: list[Evaluation]) -> list[str]:
    lines = ["### Every run and evaluation", "",
             "A row per evaluation: the run's own test split, then each other dataset it was "
             f"scored on (`RUN/{EVALUATIONS_DIR}/NAME`, its baseline the run's training "
             "majority grade).", "",
             markdown_table(evaluation_table(evaluations, HEADLINE)), "",
             "#### Referable DR (grade >= 2), per image", "",
             "At the model's grade, and at the referable-score threshold chosen on the run's "
             "validation split (reaching the target sensitivity there), applied unchanged.",
             "", markdown_table(evaluation_table(evaluations, REFERABLE)), "",
             "#### Referable DR per patient (referable if either eye is)", ""]
    with_patients = [e for e in evaluations if e.metrics.get("patient_level")]
    if with_patients:
        lines += [markdown_table(evaluation_table(with_patients, PATIENTS)), ""]
    missing = len(evaluations) - len(with_patients)
    if missing:
        lines += [f"n/a for {missing} evaluation(s): no patient has more than one image there, "
                  "or metrics.json predates per-patient figures.", ""]
    return lines + ["#### Recall per grade", "",
                    "Where accuracy hides the rare grades.", "",
                    markdown_table(evaluation_table(evaluations, RECALL)), ""]


def _comparisons_section(runs: pd.DataFrame, runs_dir: Path, figures: Path, resamples: int,
                         seed: int) -> list[str]:
    pairs = comparisons(runs, resamples, seed)
    if not pairs:
        return []
    rows, plotted, skipped = [], [], []
    for option, a, b, outcome in pairs:
        if isinstance(outcome, str):
            skipped.append(f"- {PAIRED[option]}, `{b}` - `{a}`: not compared: {outcome}")
            continue
        row = {"comparison": PAIRED[option], "A": a, "B": b,
               "images": f"{outcome.n_images:,}"}
        for key, label in COMPARED.items():
            d = outcome.differences[key]
            row |= {f"{label} A": format_value(d.a), f"{label} B": format_value(d.b),
                    f"{label} B - A [95% CI]": difference_text(d)}
            if d.difference.low is not None:
                plotted.append({"comparison": f"{b} - {a}", "metric": label,
                                **d.difference.as_dict()})
        auc = outcome.differences["referable_auc"]
        row["DeLong p (AUC)"] = "n/a" if auc.p_value is None else f"{auc.p_value:.3g}"
        rows.append(row)
    lines = ["## Comparisons", "",
             "B - A on the same test images, paired: each bootstrap resample draws the "
             f"patients once and scores both runs on them ({resamples:,} resamples, seed "
             f"{seed}), so the interval is that of the difference itself. B is the pretrained "
             "run, the next larger image size, or the binocular run (eyes both), with every "
             "other option equal. DeLong's "
             "test treats images as independent. `drgrade compare "
             f"{runs_dir}/A {runs_dir}/B --resamples {resamples} --seed {seed}` reproduces a "
             "row.", ""]
    if rows:
        lines += [markdown_table(pd.DataFrame(rows)), ""]
    if plotted:
        path = plot_differences(pd.DataFrame(plotted), figures / "comparisons.png")
        lines += [f"![paired differences]({path.relative_to(figures.parent)})", ""]
    return lines + skipped + ([""] if skipped else [])


def _status_section(runs: pd.DataFrame) -> list[str]:
    counts = runs["state"].value_counts()
    lines = ["## Runs", "",
             ", ".join(f"{n} {state}" for state, n in counts.items()) + f" of {len(runs)}.", ""]
    unfinished = runs[runs["state"] != "done"]
    if len(unfinished):
        lines += ["Not in the tables (not finished or not evaluated):", ""]
        lines += [f"- `{row['name']}`: {row['state']}" for _, row in unfinished.iterrows()]
        lines.append("")
    return lines


def _curves_section(runs, done, sizes: list[int], figures: Path) -> list[str]:
    lines = ["## Accuracy per epoch: pretrained vs scratch", "",
             "Test accuracy per epoch was tracked for these curves only (`track_test`); "
             "model selection used validation.", ""]
    for size in sizes:
        for arch in sorted(done["arch"].unique()):
            data = curve_data(runs, arch, size)
            path = plot_comparison(data, figures / f"curves_{arch}_{size}px.png",
                                   title=f"{arch} at {size} px")
            lines += [f"![{arch} at {size} px, accuracy per epoch]"
                      f"({path.relative_to(figures.parent)})", ""]
    return lines


def _resolution_section(runs, figures: Path) -> list[str]:
    table = resolution_table(runs)
    path = plot_resolution(table, figures / "resolution.png")
    shown = table.copy()
    shown.index = [f"{arch} ({init})" for arch, init in shown.index]
    shown.columns = [f"{METRICS[metric]} @ {size} px" for metric, size in shown.columns]
    return ["## Resolution", "", "Mean over seeds, test split.", "",
            _md_table(shown), "",
            f"![resolution comparison]({path.relative_to(figures.parent)})", ""]


def _calibration_section(runs: pd.DataFrame, evaluations: list[Evaluation],
                         runs_dir: Path) -> list[str]:
    classifiers = set(runs.loc[runs["head"] == "classification", "name"])
    shown = [e for e in evaluations if e.run in classifiers]
    if not shown:
        return []
    lines = ["## Calibration (classification heads)", "",
             "Top-grade confidence against accuracy; expected calibration error over 15 bins "
             "and the multiclass Brier score, from each metrics.json.", "",
             markdown_table(evaluation_table(shown, CALIBRATION)), ""]
    for e in shown:
        figure = e.folder / "figures" / f"reliability_{e.metrics.get('split', 'test')}.png"
        if figure.is_file():
            lines += [f"### {e.run}: {e.name}", "",
                      f"![{e.run} {e.name} reliability]({figure.relative_to(runs_dir)})", ""]
        else:
            lines += [f"- `{e.run}`, {e.name}: no reliability diagram (evaluated before "
                      "drgrade drew them; rerun `drgrade evaluate`)", ""]
    return lines


def _confusion_section(done: pd.DataFrame) -> list[str]:
    lines = ["## Confusion matrices (test, row-normalised)", ""]
    for _, run in done.iterrows():
        figure = Path(run["run"]) / "figures" / "confusion_test_normalized.png"
        if figure.is_file():
            lines += [f"### {run['name']}", "",
                      f"![{run['name']} confusion]({run['name']}/figures/{figure.name})", ""]
    return lines


def _provenance_section(runs: pd.DataFrame, runs_dir: Path) -> list[str]:
    lines = ["## Where each number comes from", ""]
    for _, run in runs.iterrows():
        lines.append(f"- `{run['name']}` ({run['state']}): run folder `{run['run']}`"
                     + (f", epoch chosen {run['chosen_epoch']} of {run['epochs']}"
                        if "chosen_epoch" in run and pd.notna(run.get("chosen_epoch")) else ""))
        if isinstance(run.get("command"), str):
            lines.append(f"  command: `{run['command']}`; config: "
                         f"`{run['name']}/{CONFIG_FILE}`")
        if run["state"] == "done":
            lines += [f"  evaluation `{folder.relative_to(runs_dir)}`: {METRICS_FILE} and "
                      f"predictions.csv" for folder in evaluations_of(run["run"])]
    return lines + [""]


def markdown_to_html(md_path: Path, root: Path) -> str:
    """The Markdown as one HTML file, figures embedded so it can be mailed or archived."""
    body = markdown.markdown(md_path.read_text(), extensions=["tables"])

    def embed(match: re.Match) -> str:
        image = root / match.group(1)
        data = base64.b64encode(image.read_bytes()).decode() if image.is_file() else ""
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^"]+\.png)"', embed, body)
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.4em .7em;"
             "vertical-align:top}img{max-width:100%}code{background:#f4f4f4}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{md_path.parent.name}"
            f"</title><style>{style}</style></head><body>{body}</body></html>\n")
