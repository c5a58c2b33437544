"""Binocular (eyes both) against single-eye grading on synthetic photographs with paired eyes.

    .venv/bin/python benchmarks/binocular.py [--images 700] [--seed 0] [--epochs 6]
        [--out /tmp/binocular]
    .venv/bin/python benchmarks/binocular.py --images 120 --epochs 1 --out /tmp/bino-quick

Writes synthetic EyePACS-layout photographs (`<patient>_<left|right>`, correlated eyes),
prepares them at 128 px with demo.py's split (val 0.15, test 0.25), trains the demo recipe
(demo.DEMO_TRAINING) twice with the same seed, eyes single (A) and eyes both (B), evaluates
both on the test split and prints test accuracy, kappa, referable AUC and per-patient
(worse eye) referable sensitivity/specificity with their 95% intervals, then B - A in kappa
and AUC with paired bootstrap intervals (patients resampled; `drgrade compare`).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from drgrade.config import load_config
from drgrade.data.manifest import assign_splits
from drgrade.data.prepare import prepare_dataset
from drgrade.data.sources import read_source
from drgrade.data.synthetic import write_synthetic_dataset
from drgrade.demo import DEMO_TRAINING
from drgrade.evaluation.compare import compare_evaluations, difference_text
from drgrade.evaluation.evaluate import evaluate
from drgrade.evaluation.metrics import format_interval
from drgrade.fit import train

EYES = {"A": "single", "B": "both"}


def main() -> None:
    """Prepare once, train and evaluate both runs, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=700)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=DEMO_TRAINING["epochs"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/binocular"))
    args = parser.parse_args()
    photographs, prepared = args.out / "photographs", args.out / "prepared"
    if not (photographs / "trainLabels.csv").is_file():
        write_synthetic_dataset(photographs, args.images, seed=args.seed)
    manifest = read_source(photographs).require_images()
    manifest.table = assign_splits(manifest.table, 0.15, 0.25, args.seed)
    prepare_dataset(manifest, prepared, size=DEMO_TRAINING["image_size"],
                    workers=os.cpu_count())
    metrics, minutes = {}, {}
    for label, eyes in EYES.items():
        run = args.out / f"eyes-{eyes}"
        config = load_config(None, DEMO_TRAINING | {
            "data": str(prepared), "out": str(run), "seed": args.seed, "epochs": args.epochs,
            "eyes": eyes})
        start = time.perf_counter()
        train(config, progress=False)
        minutes[label] = (time.perf_counter() - start) / 60
        metrics[label] = evaluate(run, split="test", progress=False)
    comparison = compare_evaluations(args.out / "eyes-single", args.out / "eyes-both")
    print(f"{args.images} synthetic photographs, seed {args.seed}, {args.epochs} epochs, "
          f"test split: {comparison.n_images} images, {comparison.n_patients} patients\n")
    print("| model | test accuracy | kappa | referable AUC | patient sensitivity "
          "| patient specificity | train min |")
    print("|---|---|---|---|---|---|---|")
    for label, eyes in EYES.items():
        m = metrics[label]
        patient = m["patient_level"] or {}
        cells = [format_interval(m["intervals"]["accuracy"], percent=True),
                 format_interval(m["intervals"]["quadratic_weighted_kappa"]),
                 format_interval(m["intervals"]["referable_auc"]),
                 format_interval(patient.get("referable_sensitivity"), percent=True),
                 format_interval(patient.get("referable_specificity"), percent=True)]
        print(f"| {label}: eyes {eyes} | {' | '.join(cells)} | {minutes[label]:.1f} |")
    for key, name in (("quadratic_weighted_kappa", "kappa"), ("referable_auc", "AUC")):
        print(f"\nB - A {name} (paired 95% CI): "
              f"{difference_text(comparison.differences[key])}")


if __name__ == "__main__":
    main()
