"""The experiment report: the lab's table, comparison curves, confusion matrices, resolution.

Everything is read from run folders (config.yaml, environment.json, log.csv, metrics.json),
so every number can be traced to the command and config that produced it.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import markdown
import pandas as pd
import yaml

from drgrade.errors import DrgradeError
from drgrade.plots import plot_comparison, plot_resolution
from drgrade.run_folder import (
    CONFIG_FILE,
    ENVIRONMENT_FILE,
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
# Beside the headline metrics in the per-run table: what accuracy hides.
DETAIL_METRICS = {"macro_f1": "macro F1", "referable_sensitivity": "referable sensitivity",
                  "referable_specificity": "referable specificity"}


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
        row |= {key: metrics[key] for key in (*METRICS, *DETAIL_METRICS, "majority_accuracy",
                                              "n_images")}
        row |= {f"recall {grade}": values["recall"]
                for grade, values in metrics["per_class"].items()}
    return row


def _mean_sd(values: pd.Series, percent: bool) -> str:
    values = values.dropna()
    if values.empty:
        return "n/a"
    scale = 100 if percent else 1
    text = f"{scale * values.mean():.2f}" if percent else f"{values.mean():.3f}"
    if len(values) > 1:
        text += f" ± {scale * values.std():.2f}" if percent else f" ± {values.std():.3f}"
    return text + ("%" if percent else "")


def lab_table(runs: pd.DataFrame, image_size: int) -> pd.DataFrame:
    """Rows: architectures; columns: pretrained / scratch; cells: acc, kappa, AUC (mean ± sd)."""
    done = runs[(runs["state"] == "done") & (runs["image_size"] == image_size)]
    table = {}
    for (arch, init), group in done.groupby(["arch", "init"]):
        table.setdefault(arch, {})[init] = "<br>".join(
            f"{label}: {_mean_sd(group[key], key == 'accuracy')}"
            for key, label in METRICS.items()) + f"<br>(n={len(group)})"
    frame = pd.DataFrame(table).T
    columns = [c for c in ("pretrained", "scratch") if c in frame.columns]
    return frame[columns].fillna("not run").rename_axis("architecture")


def run_metrics_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per finished run: headline metrics, per-grade recall, referable sens./spec."""
    done = runs[runs["state"] == "done"].set_index("name")
    recalls = [c for c in done.columns if c.startswith("recall ")]
    columns = {**METRICS, **DETAIL_METRICS} | {c: c for c in recalls}
    return done[list(columns)].rename(columns=columns).astype(float).rename_axis("run")


def resolution_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean test METRICS per architecture/initialisation (rows) and (metric, size) (columns)."""
    done = runs[runs["state"] == "done"]
    means = done.groupby(["arch", "init", "image_size"])[list(METRICS)].mean()
    return means.unstack("image_size")


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


def write_report(runs_dir: Path | str) -> tuple[Path, Path]:
    """Write RUNS_DIR/report.md and a self-contained report.html; their paths."""
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
        baseline = done["majority_accuracy"].iloc[0]
        lines += [
            "## Test results at the epoch chosen on validation", "",
            f"**Majority-class baseline** (always the most common training grade): "
            f"{100 * baseline:.2f}% test accuracy on {int(done['n_images'].iloc[0]):,} images. "
            "Accuracy alone says little; kappa and referable AUC stand beside it.", "",
            "Mean ± sd over seeds. The checkpoint of each run is the epoch with the best "
            "validation kappa; the test split never chose anything.", "",
        ]
        for size in sizes:
            lines += [f"### {size} px", "", _md_table(lab_table(runs, size)), ""]
        lines += ["### Every run", "",
                  "Per-grade recall and referable-DR sensitivity/specificity at the model's "
                  "grade: where accuracy hides the rare grades.", "",
                  _md_table(run_metrics_table(runs)), ""]
        lines += _curves_section(runs, done, sizes, figures)
        if len(sizes) > 1:
            lines += _resolution_section(runs, figures)
        lines += _confusion_section(done)
    lines += _provenance_section(runs)
    md_path = runs_dir / REPORT_MD
    md_path.write_text("\n".join(lines) + "\n")
    html_path = runs_dir / REPORT_HTML
    html_path.write_text(_html(md_path, runs_dir))
    return md_path, html_path


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


def _confusion_section(done: pd.DataFrame) -> list[str]:
    lines = ["## Confusion matrices (test, row-normalised)", ""]
    for _, run in done.iterrows():
        figure = Path(run["run"]) / "figures" / "confusion_test_normalized.png"
        if figure.is_file():
            lines += [f"### {run['name']}", "",
                      f"![{run['name']} confusion]({run['name']}/figures/{figure.name})", ""]
    return lines


def _provenance_section(runs: pd.DataFrame) -> list[str]:
    lines = ["## Where each number comes from", ""]
    for _, run in runs.iterrows():
        lines.append(f"- `{run['name']}` ({run['state']}): run folder `{run['run']}`"
                     + (f", epoch chosen {run['chosen_epoch']} of {run['epochs']}"
                        if "chosen_epoch" in run and pd.notna(run.get("chosen_epoch")) else ""))
        if isinstance(run.get("command"), str):
            lines.append(f"  command: `{run['command']}`; config: "
                         f"`{run['name']}/{CONFIG_FILE}`")
    return lines + [""]


def _html(md_path: Path, root: Path) -> str:
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
