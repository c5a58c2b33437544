"""Speed of the bootstrap confidence intervals on one core.

    .venv/bin/python benchmarks/bootstrap_speed.py    # --images 10000 --resamples 2000 --repeat 3

10,000 synthetic test images, two eyes of 5,000 patients, 2,000 patient resamples, one
thread (threadpoolctl caps BLAS and OpenMP). Timed per metric group: drawing the
resamples' image weights, the confusion-matrix metrics of every resample (one matmul:
kappa, accuracy, macro F1, sensitivity and specificity at the model's grade and at a score
threshold), the weighted ROC AUC of every resample; then `bootstrap_intervals` end to
end, `patient_level` and the paired `compare_models`. Best of --repeat in CPU seconds of
this process (other jobs on a shared machine only slow a run down). The target: under 10 s
for `bootstrap_intervals`.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
from threadpoolctl import threadpool_limits

from drgrade.evaluation.comparison import compare_models
from drgrade.evaluation.intervals import (
    bootstrap_intervals,
    patient_level,
    resample_metrics,
    resample_weights,
    weighted_auc,
)

TARGET_SECONDS = 10.0


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """True grades, a model's grades and referable score, and patient ids (2 eyes each)."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(5, n, p=[0.45, 0.15, 0.2, 0.12, 0.08])
    predicted = np.clip(truth + rng.choice([-1, 0, 0, 0, 1], n), 0, 4)
    score = np.clip(truth / 4 + rng.normal(0, 0.25, n), 0, 1).astype(np.float32)
    return truth, predicted, score, np.arange(n) // 2


def best_cpu_seconds(run, repeat: int) -> float:
    """Fewest CPU seconds of this process over `repeat` calls of `run`."""
    times = []
    for _ in range(repeat):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    truth, predicted, score, patients = synthetic(args.images)
    other = np.clip(predicted + (np.arange(args.images) % 7 == 0), 0, 4)
    logits = np.random.default_rng(1).normal(0, 1, (args.images, 5)) + 1.5 * np.eye(5)[truth]
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    n, b = args.images, args.resamples

    def weights() -> list[np.ndarray]:
        return list(resample_weights(patients, n, b))

    blocks = weights()
    referable = truth >= 2
    cases = {
        "draw the image weights": weights,
        "every metric of every resample":
            lambda: [resample_metrics(truth, predicted, score, w, 0.5) for w in blocks],
        "  of which the weighted ROC AUC":
            lambda: [weighted_auc(referable, score, w) for w in blocks],
        "bootstrap_intervals, end to end":
            lambda: bootstrap_intervals(truth, predicted, score, patients, threshold=0.5),
        "bootstrap_intervals + one-vs-rest AUC":
            lambda: bootstrap_intervals(truth, predicted, score, patients, threshold=0.5,
                                        probabilities=probabilities),
        "patient_level (5,000 patients)":
            lambda: patient_level(truth, predicted, score, patients, threshold=0.5),
        "compare_models (paired, 2 models + DeLong)":
            lambda: compare_models(truth, predicted, score, other, score * 0.9, patients),
    }
    print(f"{n:,} images ({n // 2:,} patients), {b:,} resamples, 1 thread, "
          f"{platform.processor() or platform.machine()}, numpy {np.__version__}")
    with threadpool_limits(1):
        for name, run in cases.items():
            seconds = best_cpu_seconds(run, args.repeat)
            print(f"  {name:<45}{seconds:7.2f} s")
            if name.startswith("bootstrap_intervals"):
                verdict = "under" if seconds < TARGET_SECONDS else "OVER"
                print(f"  {'':<45}({verdict} the {TARGET_SECONDS:.0f} s target)")


if __name__ == "__main__":
    main()
