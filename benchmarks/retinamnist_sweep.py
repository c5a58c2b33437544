"""Compare RetinaMNIST recipes: each recipe x seed trained and scored by retinamnist_accuracy.py.

    .venv/bin/python benchmarks/retinamnist_sweep.py [--jobs 2] [--seeds 0 1 2]
        [--only NAME ...] [--set KEY=VALUE ...] [--out /tmp/retinamnist-accuracy] [--minutes M]

A recipe is a set of overrides of configs/retinamnist.yaml (BASE, then RECIPES below). Every
(recipe, seed) is one process of retinamnist_accuracy.py, run --jobs at a time; finished
ones are reused on a rerun. After --minutes, running jobs are stopped (a rerun resumes them
from scratch) and the summary covers what finished. The summary has one row per recipe and
checkpoint selection, mean ± sd over seeds, ordered by validation QWK: pick a recipe by its
validation columns, never by its test columns.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
# The config as it was swept (it ships rotation 180 since, this sweep's finding), so reruns
# reproduce the recorded table.
BASE = ["rotation=15"]
# name -> overrides of BASE. Input sizes above 28 upsample the 28 px images: with ResNet's
# 4x stem, 112 px gives layer1 the 28x28 maps a CIFAR-style stem would.
RECIPES = {
    "cls-28": [],
    "reg-28": ["head=regression"],
    "cls-28-sgd": ["optimizer=sgd", "lr=0.05", "nesterov=true", "weight_decay=0.0005"],
    "cls-28-rot180": ["rotation=180"],
    "cls-56": ["image_size=56"],
    "reg-56": ["image_size=56", "head=regression"],
    "cls-112": ["image_size=112"],
    "reg-112": ["image_size=112", "head=regression"],
    "cls-112-rot180": ["image_size=112", "rotation=180"],
    "reg-112-rot180": ["image_size=112", "rotation=180", "head=regression"],
    "cls-112-smooth": ["image_size=112", "label_smoothing=0.1"],
    "r50-cls-112": ["image_size=112", "arch=resnet50"],
    # Second round, around the first round's choice (rotation 180).
    "reg-28-rot180": ["rotation=180", "head=regression"],
    "cls-28-rot180-60ep": ["rotation=180", "epochs=60"],
    "cls-28-rot180-progressive": ["rotation=180", "sampler=progressive"],
    "cls-28-rot180-crop": ["rotation=180", "crop_scale=0.7"],
    "cls-28-rot180-smooth": ["rotation=180", "label_smoothing=0.1"],
}
SELECTIONS = ("kappa", "kappa+tta", "accuracy", "accuracy+tta")
COLUMNS = ("accuracy", "auc", "kappa", "referable_auc", "val_accuracy", "val_auc", "val_kappa")


def run_jobs(args, jobs: list[tuple[str, int]]) -> None:
    """Run retinamnist_accuracy.py for each (recipe, seed), --jobs at a time."""
    deadline = time.monotonic() + args.minutes * 60
    pending, running = list(jobs), {}
    while pending or running:
        while pending and len(running) < args.jobs and time.monotonic() < deadline:
            name, seed = pending.pop(0)
            log = args.out / name / f"seed{seed}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, str(HERE / "retinamnist_accuracy.py"), "--name", name,
                       "--seeds", str(seed), "--out", str(args.out), "--prune",
                       "--set", *BASE, *RECIPES[name], *args.set]
            with log.open("w") as stream:
                running[(name, seed)] = (subprocess.Popen(command, stdout=stream, stderr=stream),
                                         time.monotonic())
        if time.monotonic() >= deadline:
            pending.clear()
            for process, _ in running.values():
                process.terminate()
        time.sleep(1)
        for key, (process, start) in list(running.items()):
            if process.poll() is not None:
                del running[key]
                status = "done" if process.returncode == 0 else f"FAILED ({process.returncode})"
                print(f"{key[0]} seed {key[1]}: {status} in {(time.monotonic() - start) / 60:.1f}"
                      f" min; {len(pending)} waiting, {len(running)} running", flush=True)


def summary(args, names: list[str]) -> str:
    """A markdown table: recipe x selection, mean ± sd over the seeds that finished."""
    header = ("recipe", "selected by", "test ACC", "test AUC", "test QWK", "test ref. AUC",
              "val ACC", "val AUC", "val QWK", "seeds", "train min")
    rows = []
    for name in names:
        results = [json.loads(path.read_text())
                   for path in sorted((args.out / name).glob("seed*/benchmark.json"))]
        for selection in SELECTIONS:
            scored = [r for r in results if selection in r]
            if not scored:
                continue
            values = {c: np.array([r[selection][c] for r in scored], dtype=float)
                      for c in COLUMNS}
            minutes = np.mean([r["train_minutes"] for r in scored])
            sd = (lambda v: v.std(ddof=1)) if len(scored) > 1 else (lambda v: 0.0)
            rows.append((values["val_kappa"].mean(), [name, selection] + [
                f"{values[c].mean():.3f} ± {sd(values[c]):.3f}" for c in COLUMNS]
                + [str(len(scored)), f"{minutes:.1f}"]))
    rows.sort(key=lambda row: -row[0])
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for _, cells in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="processes at a time")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", choices=list(RECIPES), help="these recipes only")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for every recipe, e.g. data=FILE or epochs=1 to try it")
    parser.add_argument("--out", type=Path, default=Path("/tmp/retinamnist-accuracy"))
    parser.add_argument("--minutes", type=float, default=float("inf"),
                        help="stop starting and running jobs after this many minutes")
    args = parser.parse_args()
    names = args.only or list(RECIPES)
    run_jobs(args, [(name, seed) for seed in args.seeds for name in names])
    print(summary(args, names))


if __name__ == "__main__":
    main()
