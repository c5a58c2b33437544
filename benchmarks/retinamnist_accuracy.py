"""RetinaMNIST test ACC, AUC and QWK of a drgrade recipe, mean and sd over seeds.

    .venv/bin/python benchmarks/retinamnist_accuracy.py [--config configs/retinamnist.yaml]
        [--seeds 0 1 2] [--set KEY=VALUE ...] [--name NAME] [--out /tmp/retinamnist-accuracy]
        [--prune]
    .venv/bin/python benchmarks/retinamnist_accuracy.py --seeds 0 --set epochs=1 \
        max_train_batches=2 --name quick --out /tmp/retinamnist-quick    # a check that it runs

Each seed trains the recipe with drgrade's train() on the official split (1,080 train,
120 val, 400 test) into OUT/NAME/seedN, then scores checkpoints chosen on validation with
drgrade's evaluate() (which writes metrics.json) on the 400 test images:

  kappa     best val quadratic kappa: drgrade's own best.ckpt, what `drgrade evaluate` uses
  accuracy  best val accuracy (first epoch reaching it)
  loss      lowest val loss
  last      the last epoch

and each of them again with flip test-time augmentation (`+tta`: outputs averaged over the
image and its horizontal, vertical and double flips, as `drgrade evaluate --tta` does).

AUC is MedMNIST's: one-vs-rest macro over the 5 grades, sklearn's roc_auc_score(...,
multi_class="ovr", average="macro") on the softmax probabilities. A regression head gives
one score s per image; its per-grade score is -|s - k| (closeness to grade k; any
decreasing function of |s - k| ranks the same, so gives the same one-vs-rest AUC), which
is not the same quantity as a softmax AUC, so the referable-DR AUC (grade >= 2, from the
summed probabilities of grades 2-4 or from s) is printed beside it for both heads.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from sklearn.metrics import cohen_kappa_score, roc_auc_score

import drgrade.fit as fit
from drgrade.checkpoint import load_network
from drgrade.config import TrainConfig, load_config
from drgrade.data.datamodule import GradingDataModule
from drgrade.evaluation.evaluate import evaluate
from drgrade.grades import NUM_GRADES
from drgrade.inference.torch_grader import TorchGrader
from drgrade.run_folder import CHECKPOINT_DIR, read_run_config, run_of

ROOT = Path(__file__).resolve().parents[1]
NPZ = ROOT.parent / "shared" / "data" / "retinamnist" / "retinamnist.npz"
# selection -> (checkpoint file, monitored value, mode); "kappa" is train()'s own best.ckpt.
SELECTIONS = {"kappa": ("best.ckpt", None, None),
              "accuracy": ("best-accuracy.ckpt", "val_accuracy", "max"),
              "loss": ("best-loss.ckpt", "val_loss", "min"),
              "last": ("last.ckpt", None, None)}
METRICS = ("accuracy", "auc", "kappa", "referable_auc", "val_accuracy", "val_auc", "val_kappa")
PUBLISHED = "MedMNIST v2 ResNet-18 (28): ACC 0.524, AUC 0.717; best published ACC 0.531, AUC 0.750"


def train_with_selections(config) -> None:
    """train(config), also keeping the best val accuracy and val loss checkpoints."""
    folder = Path(config.out) / CHECKPOINT_DIR
    fit.train(config, progress=False, extra_callbacks=[
        ModelCheckpoint(dirpath=folder, filename=Path(file).stem, monitor=monitor, mode=mode,
                        enable_version_counter=False)
        for file, monitor, mode in SELECTIONS.values() if monitor])


def one_vs_rest_auc(outputs: np.ndarray, grades: np.ndarray) -> float:
    """MedMNIST's AUC: the mean over grades of the ROC AUC of grade k against the rest.

    On probabilities this is sklearn's roc_auc_score(multi_class="ovr", average="macro")
    (and MedMNIST's getAUC); it is written out because sklearn insists on probabilities.
    """
    if outputs.ndim == 1:  # regression: closeness of the score to each grade
        outputs = -np.abs(outputs[:, None] - np.arange(NUM_GRADES)[None, :])
    return float(np.mean([roc_auc_score(grades == k, outputs[:, k])
                          for k in range(NUM_GRADES) if 0 < (grades == k).sum() < len(grades)]))


def load_run(checkpoint: Path) -> tuple[TorchGrader, GradingDataModule]:
    """The checkpoint's grader and its run's training data (from the run's config.yaml)."""
    network, card = load_network(checkpoint)
    config = TrainConfig(**read_run_config(run_of(checkpoint)))
    return TorchGrader(network, card), GradingDataModule(config)


def split_outputs(grader: TorchGrader, data: GradingDataModule, split: str,
                  tta: bool) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (or scores) and true grades of one split, as `drgrade predict` grades."""
    outputs, grades = [], []
    for images, batch_grades in data.loader(data.dataset(split)):
        outputs.append(grader.outputs(images.numpy(), tta))
        grades.append(batch_grades.numpy())
    return np.concatenate(outputs), np.concatenate(grades)


def score(checkpoint: Path, out: Path, tta: bool) -> dict:
    """evaluate() on the test split (metrics.json in `out`) plus the one-vs-rest AUC."""
    metrics = evaluate(checkpoint, split="test", tta=tta, out=out, progress=False)
    grader, data = load_run(checkpoint)
    outputs, grades = split_outputs(grader, data, "test", tta)
    epoch = torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"]
    result = {"epoch": int(epoch), "accuracy": metrics["accuracy"],
              "auc": one_vs_rest_auc(outputs, grades),
              "kappa": metrics["quadratic_weighted_kappa"],
              "referable_auc": metrics["referable_auc"]}
    # The same on val, where recipes may be compared without looking at test.
    outputs, grades = split_outputs(grader, data, "val", tta)
    predicted = grader.decode(outputs)
    result |= {"val_accuracy": float(np.mean(predicted == grades)),
               "val_auc": one_vs_rest_auc(outputs, grades),
               "val_kappa": float(cohen_kappa_score(grades, predicted, weights="quadratic"))}
    (out / "benchmark.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def run_seed(args, overrides: dict, seed: int) -> dict:
    """Train one seed (unless done) and score each selection, plain and with flip TTA.

    {"kappa": metrics, "kappa+tta": metrics, ..., "train_minutes": m}. A rerun only scores
    what is missing; --prune then deletes all checkpoints but best.ckpt (135 MB each).
    """
    run = args.out / args.name / f"seed{seed}"
    done = run / "benchmark.json"
    results = json.loads(done.read_text()) if done.is_file() else {}
    if "train_minutes" not in results:
        config = load_config(args.config, overrides | {"seed": seed, "out": str(run)})
        start = time.perf_counter()
        train_with_selections(config)
        results["train_minutes"] = (time.perf_counter() - start) / 60
        done.write_text(json.dumps(results, indent=2) + "\n")
    for name, (file, _, _) in SELECTIONS.items():
        checkpoint = run / CHECKPOINT_DIR / file
        for tta in (False, True):
            key = name + ("+tta" if tta else "")
            if key not in results and checkpoint.is_file():
                results[key] = score(checkpoint, run / f"eval-{key}", tta)
        if args.prune and file != "best.ckpt":
            checkpoint.unlink(missing_ok=True)
    done.write_text(json.dumps(results, indent=2) + "\n")
    return results


def ensemble(args, seeds: list[int]) -> dict:
    """Test metrics of the seeds' best.ckpt models averaged (probabilities, or scores)."""
    outputs, graders = [], []
    for seed in seeds:
        grader, data = load_run(args.out / args.name / f"seed{seed}" / CHECKPOINT_DIR
                                / "best.ckpt")
        out, grades = split_outputs(grader, data, "test", False)
        outputs.append(out)
        graders.append(grader)
    mean = np.mean(outputs, axis=0)
    if graders[0].is_regression:  # each model's cut points differ: average its decoded grades
        predicted = np.rint(np.mean([g.decode(o) for g, o in zip(graders, outputs,
                                                                  strict=True)], axis=0))
        referable = mean
    else:
        predicted, referable = mean.argmax(axis=1), mean[:, 2:].sum(axis=1)
    return {"accuracy": float(np.mean(predicted == grades)), "auc": one_vs_rest_auc(mean, grades),
            "kappa": float(cohen_kappa_score(grades, predicted, weights="quadratic")),
            "referable_auc": float(roc_auc_score(grades >= 2, referable))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "retinamnist.yaml")
    parser.add_argument("--data", type=Path, default=NPZ)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. head=regression epochs=60")
    parser.add_argument("--name", default="recipe", help="sub-folder of --out for these runs")
    parser.add_argument("--out", type=Path, default=Path("/tmp/retinamnist-accuracy"))
    parser.add_argument("--prune", action="store_true",
                        help="after scoring, delete every checkpoint but best.ckpt")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest on a busy 2-core machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {"data": str(args.data)} | dict(item.split("=", 1) for item in args.set)

    per_seed = {seed: run_seed(args, overrides, seed) for seed in args.seeds}
    print(f"{args.name}: {args.config.name} {' '.join(args.set)}, seeds {args.seeds}, "
          f"test n=400, {torch.get_num_threads()} threads")
    for seed, results in per_seed.items():
        minutes = results["train_minutes"]
        print(f"  seed {seed} ({f'{minutes:.1f}' if minutes else '?'} min): " + "; ".join(
            f"{key} ep{r['epoch']} ACC {r['accuracy']:.3f} AUC {r['auc']:.3f} "
            f"QWK {r['kappa']:.3f}" for key, r in results.items() if key != "train_minutes"))
    print("\n| selected by | test ACC | test AUC (ovr macro) | test QWK | test referable AUC "
          "| val ACC | val AUC | val QWK | seeds |")
    print("|---" * 9 + "|")
    for name in SELECTIONS:
        for key in (name, name + "+tta"):
            scored = [r[key] for r in per_seed.values() if key in r]
            if not scored:
                continue
            cells = []
            for metric in METRICS:
                values = np.array([r[metric] for r in scored], dtype=float)
                sd = values.std(ddof=1) if len(values) > 1 else 0.0
                cells.append(f"{values.mean():.3f} ± {sd:.3f}")
            print(f"| val {key} | " + " | ".join(cells) + f" | {len(scored)} |")
    if len(args.seeds) > 1:
        e = ensemble(args, args.seeds)
        print(f"| ensemble of the {len(args.seeds)} best.ckpt | {e['accuracy']:.3f} | "
              f"{e['auc']:.3f} | {e['kappa']:.3f} | {e['referable_auc']:.3f} | | | | |")
    print(f"\n{PUBLISHED}")


if __name__ == "__main__":
    main()
