"""`drgrade demo`: the whole pipeline offline on synthetic photographs, in a few CPU minutes.

synthetic photographs (EyePACS layout) -> prepare (fundus crop, 128 px) -> train ResNet-18
from scratch -> evaluate on the held-out test split. Every stage resumes: a rerun reuses
what an earlier (or interrupted) run finished.
"""

from __future__ import annotations

import os
from pathlib import Path

from drgrade.config import load_config
from drgrade.data.manifest import assign_splits
from drgrade.data.prepare import prepare_dataset
from drgrade.data.sources import read_source
from drgrade.data.synthetic import write_synthetic_dataset
from drgrade.evaluation.evaluate import evaluate
from drgrade.fit import train
from drgrade.run_folder import (
    CONFIG_FILE,
    best_checkpoint,
    epochs_logged,
    last_checkpoint,
    read_run_config,
)

# Chosen so ResNet-18 from scratch clearly learns on 2 CPU cores within the time budget.
DEMO_TRAINING = {
    "arch": "resnet18", "pretrained": False, "head": "classification", "image_size": 128,
    "batch_size": 32, "epochs": 6, "optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05,
    "scheduler": "cosine", "warmup_epochs": 0.5, "flips": True, "rotation": 20.0,
    "num_workers": 1, "accelerator": "auto", "devices": "1",
}


def run_demo(out: Path, n_images: int = 800, seed: int = 0, epochs: int | None = None,
             say=print) -> dict:
    """Run the demo into `out`; the test-split metrics."""
    out = Path(out)
    photographs, prepared, run = out / "photographs", out / "prepared", out / "run"

    if not (photographs / "trainLabels.csv").is_file():
        say(f"[1/4] writing {n_images} synthetic fundus photographs to {photographs}")
        write_synthetic_dataset(photographs, n_images, seed=seed)
    else:
        say(f"[1/4] reusing the synthetic photographs in {photographs}")

    say(f"[2/4] preparing them (fundus crop, {DEMO_TRAINING['image_size']} px) into {prepared}")
    manifest = read_source(photographs).require_images()
    manifest.table = assign_splits(manifest.table, 0.15, 0.25, seed)
    result = prepare_dataset(manifest, prepared, size=DEMO_TRAINING["image_size"],
                             workers=os.cpu_count())
    say(result.summary())

    settings = DEMO_TRAINING | {"data": str(prepared), "out": str(run), "seed": seed}
    if epochs:
        settings["epochs"] = epochs
    config = load_config(None, settings)
    if _finished(run, config.epochs):
        say(f"[3/4] reusing the trained run in {run}")
    else:
        resume = last_checkpoint(run).is_file()
        say(f"[3/4] {'resuming' if resume else 'training'} ResNet-18 from scratch "
            f"({config.epochs} epochs) into {run}")
        train(config, resume=resume)

    say(f"[4/4] evaluating {best_checkpoint(run)} on the held-out test split")
    return evaluate(run, split="test")


def _finished(run: Path, epochs: int) -> bool:
    """True when `run` holds a completed run of `epochs` epochs."""
    return (run / CONFIG_FILE).is_file() and read_run_config(run)["epochs"] == epochs \
        and epochs_logged(run) >= epochs
