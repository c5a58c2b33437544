"""The search report: every trial, the recipe chosen on validation kappa, its test metrics.

Written by `drgrade search` into OUT/search.md and a self-contained OUT/search.html.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from drgrade.atomic import write_text
from drgrade.evaluation.metrics import INTERVAL_METRICS, format_interval, format_value
from drgrade.evaluation.report import markdown_to_html
from drgrade.evaluation.report_tables import markdown_table
from drgrade.run_folder import CONFIG_FILE, METRICS_FILE

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

SEARCH_MD = "search.md"
SEARCH_HTML = "search.html"
PERCENT = {"accuracy", "referable_sensitivity", "referable_specificity"}
METRIC_NAMES = {"accuracy": "accuracy", "quadratic_weighted_kappa": "quadratic weighted kappa",
                "macro_f1": "macro F1", "referable_sensitivity": "referable sensitivity",
                "referable_specificity": "referable specificity",
                "referable_auc": "referable AUC", "one_vs_rest_auc": "one-vs-rest AUC"}


def _best_val_kappa(trial: FrozenTrial) -> float | None:
    """The trial's value, or for a pruned or failed one the best kappa it reported."""
    if trial.value is not None:
        return trial.value
    return max(trial.intermediate_values.values(), default=None)


def trials_table(trials: list[FrozenTrial]) -> pd.DataFrame:
    """One row per trial: number, state, each parameter, best val kappa, epochs run."""
    names = list(dict.fromkeys(name for trial in trials for name in trial.params))
    rows = []
    for trial in trials:
        rows.append({"trial": str(trial.number), "state": trial.state.name.lower(),
                     **{name: f"{trial.params[name]:.3g}" if isinstance(trial.params.get(name),
                                                                        float)
                        else str(trial.params.get(name, "")) for name in names},
                     "best val kappa": format_value(_best_val_kappa(trial)),
                     # Epochs validated: a pruned trial stops after the one it was pruned at.
                     "epochs run": str(len(trial.intermediate_values))})
    return pd.DataFrame(rows)


def recipe_metrics_table(metrics: dict) -> pd.DataFrame:
    """The chosen run's test metrics, each with the 95% interval metrics.json carries."""
    intervals = metrics.get("intervals", {})
    rows = [{"metric": METRIC_NAMES[name],
             "test (95% CI)": format_interval(intervals.get(name), name in PERCENT)
             if name in intervals else format_value(metrics.get(name), name in PERCENT)}
            for name in INTERVAL_METRICS]
    rows.append({"metric": f"majority baseline (grade {metrics['majority_grade']})",
                 "test (95% CI)": format_value(metrics["majority_accuracy"], True)})
    return pd.DataFrame(rows)


def write_search_report(out: Path, search_file: Path, trials: list[FrozenTrial],
                        best: FrozenTrial | None, command: str | None, metrics: dict | None,
                        sampler: dict) -> tuple[Path, Path]:
    """Write OUT/search.md and OUT/search.html; their paths."""
    out = Path(out)
    states = pd.Series([trial.state.name.lower() for trial in trials]).value_counts()
    lines = [f"# drgrade search: {out.name}", "",
             f"Search file `{search_file}`: {len(trials)} trial(s) "
             f"({', '.join(f'{n} {state}' for state, n in states.items())}), TPE sampler "
             f"seeded {sampler['seed']}, {sampler['pruner']} pruner. Trials are chosen and "
             "pruned on validation kappa only; the test split is scored for the chosen "
             "trial alone.", "", "## Trials", "", markdown_table(trials_table(trials)), ""]
    failed = [trial for trial in trials if "error" in trial.user_attrs]
    lines += [f"- trial {trial.number} failed: {trial.user_attrs['error']}" for trial in failed]
    lines += [""] if failed else []
    if best is None or metrics is None or command is None:
        lines += ["No trial has completed yet: no recipe to choose."]
    else:
        run = f"trial-{best.number}"
        lines += [f"## Chosen recipe: trial {best.number}", "",
                  f"Best validation kappa {best.value:.3f}; run folder `{run}/` (resolved "
                  f"config `{run}/{CONFIG_FILE}`, test metrics `{run}/{METRICS_FILE}`).", ""]
        lines += [f"- {name}: `{value}`" for name, value in best.params.items()]
        lines += ["", "Train it again:", "", "```bash", command, "```", "",
                  "## Test metrics of the chosen recipe", "",
                  f"{metrics['n_images']:,} test images; 95% bootstrap intervals.", "",
                  markdown_table(recipe_metrics_table(metrics)), "",
                  f"![training curves]({run}/figures/curves.png)", ""]
    md_path = out / SEARCH_MD
    write_text(md_path, "\n".join(lines) + "\n")
    html_path = out / SEARCH_HTML
    write_text(html_path, markdown_to_html(md_path, out))
    return md_path, html_path
