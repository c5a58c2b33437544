"""The experiment report: the lab's table, comparisons, curves, calibration, confusion matrices.

What it reads is in report_data.py, its tables in report_tables.py; this module writes the
sections, the Markdown and the self-contained HTML. Run folders evaluated before drgrade
wrote intervals and per-image predictions still report, with n/a for what they lack.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import markdown
import pandas as pd

from drgrade.atomic import write_text
from drgrade.evaluation.compare import LABELS, difference_text, evaluations_of
from drgrade.evaluation.intervals import RESAMPLES
from drgrade.evaluation.metrics import format_value
from drgrade.evaluation.report_data import (
    METRICS,
    PAIRED,
    Evaluation,
    collect_evaluations,
    collect_runs,
    comparisons,
    curve_data,
)
from drgrade.evaluation.report_tables import (
    CALIBRATION,
    HEADLINE,
    PATIENTS,
    RECALL,
    REFERABLE,
    evaluation_table,
    lab_table,
    markdown_table,
    number_table,
    resolution_table,
)
from drgrade.plots import plot_comparison, plot_differences, plot_resolution
from drgrade.run_folder import CONFIG_FILE, EVALUATIONS_DIR, METRICS_FILE

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
FIGURES = "report_figures"
COMPARED = {key: LABELS[key] for key in ("quadratic_weighted_kappa", "referable_auc")}


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
        lines += [f"### {size} px", "", number_table(lab_table(done, size)), ""]
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
            number_table(shown), "",
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
