"""Regression cut-point search: drgrade's vectorised search against the plain library way.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cut_point_search.py   # --sizes 1000 10000 50000

Both run the same coordinate search (from 0.5/1.5/2.5/3.5, each cut point in turn moves to
the best gap between its neighbours, until none improves quadratic kappa):

  fast   `operating_points.fit_cut_points`: one sorted copy of the scores, every candidate
         of a move scored in one vectorised `agreement.quadratic_kappa` call
  plain  the same moves, each candidate decoded with numpy and scored with scikit-learn's
         cohen_kappa_score(weights="quadratic"), one call per candidate

Synthetic validation scores: grade + N(0, 0.6) noise in float32, grades in EyePACS
proportions. The plain search runs to the end up to --full-max scores. Above that it would
take minutes, so its time is extrapolated: the search path is replayed with a vectorised
kappa (public `agreement.quadratic_kappa`) to count the candidates it scores, and
cohen_kappa_score is timed on --sample of those candidates; the estimate is count x mean
time per call. The same sampled candidates check that scikit-learn's kappa equals the
vectorised one (so the plain search would walk the same path); there the plain search's
cut points are those of the replay. Times are CPU seconds of
this process, one thread (threadpoolctl), best of --repeat for the fast search.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import numpy as np
import sklearn
from sklearn.metrics import cohen_kappa_score
from threadpoolctl import threadpool_limits

from drgrade.agreement import quadratic_kappa
from drgrade.grades import NUM_GRADES
from drgrade.operating_points import DEFAULT_CUT_POINTS, decode_scores, fit_cut_points

EYEPACS = (0.735, 0.069, 0.151, 0.025, 0.020)  # share of each grade in EyePACS train
LABELS = list(range(NUM_GRADES))


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Regression scores (float32, as a network gives them) and true grades."""
    rng = np.random.default_rng(seed)
    grades = rng.choice(NUM_GRADES, n, p=EYEPACS)
    return (grades + rng.normal(0, 0.6, n)).astype(np.float32), grades


def sklearn_kappas(scores: np.ndarray, grades: np.ndarray) -> Callable:
    """Kappa of each trial row of cut points, one cohen_kappa_score call per row."""
    def kappas(trials: np.ndarray) -> np.ndarray:
        return np.array([cohen_kappa_score(grades, decode_scores(scores, cuts),
                                           weights="quadratic", labels=LABELS)
                         for cuts in trials])
    return kappas


def vectorised_kappas(scores: np.ndarray, grades: np.ndarray) -> Callable:
    """Kappa of each trial row from cumulative grade counts over the sorted scores."""
    order = np.argsort(scores, kind="stable")
    ordered = scores[order]
    cumulative = np.vstack([np.zeros(NUM_GRADES, np.int64),
                            np.eye(NUM_GRADES, dtype=np.int64)[grades[order]].cumsum(0)])

    def kappas(trials: np.ndarray) -> np.ndarray:
        below = np.searchsorted(ordered, trials, side="right")  # graded below the cut
        bounds = np.hstack([np.zeros((len(trials), 1), int), below,
                            np.full((len(trials), 1), len(ordered))])
        return quadratic_kappa(np.diff(cumulative[bounds], axis=1))
    return kappas


def candidates(unique: np.ndarray, low: float, high: float) -> np.ndarray:
    """One cut point in each gap between distinct scores within (low, high), as drgrade."""
    edges = np.concatenate([[-np.inf], unique, [np.inf]])
    left, right = np.maximum(edges[:-1], low), np.minimum(edges[1:], high)
    keep = left < right
    left, right = left[keep], right[keep]
    return np.where(np.isinf(left), right - 1.0,
                    np.where(np.isinf(right), left + 1.0, (left + right) / 2))


def coordinate_search(scores: np.ndarray, score_trials: Callable
                      ) -> tuple[np.ndarray, list[np.ndarray]]:
    """fit_cut_points' search with any kappa: the cut points and every trial it scored."""
    scores = scores.astype(np.float64)
    unique = np.unique(scores)
    cuts = np.array(DEFAULT_CUT_POINTS, dtype=np.float64)
    best = score_trials(cuts[None])[0]
    scored = [cuts[None].copy()]
    for _ in range(100):
        improved = False
        for i in range(len(cuts)):
            low = cuts[i - 1] if i > 0 else -np.inf
            high = cuts[i + 1] if i + 1 < len(cuts) else np.inf
            options = candidates(unique, low, high)
            trials = np.repeat(cuts[None], len(options), axis=0)
            trials[:, i] = options
            scored.append(trials)
            kappas = np.nan_to_num(score_trials(trials), nan=-np.inf)
            j = int(np.argmax(kappas))
            if kappas[j] > best + 1e-12:  # the same margin as drgrade's
                cuts[i], best, improved = options[j], kappas[j], True
        if not improved:
            break
    return cuts, scored


def cpu_seconds(run: Callable) -> tuple[float, object]:
    start = time.process_time()
    result = run()
    return time.process_time() - start, result


def sk_kappa(scores: np.ndarray, grades: np.ndarray, cuts) -> float:
    return float(cohen_kappa_score(grades, decode_scores(scores, cuts), weights="quadratic",
                                   labels=LABELS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 50_000])
    parser.add_argument("--full-max", type=int, default=1000,
                        help="largest size the plain search runs to the end")
    parser.add_argument("--sample", type=int, default=200,
                        help="cohen_kappa_score calls timed per extrapolated size")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"numpy {np.__version__}, scikit-learn {sklearn.__version__}, one thread\n")
    print("| validation scores | fast (fit_cut_points) CPU s | candidates scored | plain "
          "(cohen_kappa_score) CPU s | plain / fast | kappa fast | kappa plain |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(1)
    notes = []  # after the table, which they would break
    with threadpool_limits(1):
        for n in args.sizes:
            scores, grades = synthetic(n)
            fast_s, fast_cuts = min(cpu_seconds(lambda s=scores, g=grades: fit_cut_points(s, g))
                                    for _ in range(args.repeat))
            replayed_cuts, scored = coordinate_search(scores, vectorised_kappas(scores, grades))
            trials = np.concatenate(scored)
            count = len(trials)
            sample = trials[rng.choice(count, min(args.sample, count), replace=False)]
            seconds, sampled = cpu_seconds(lambda t=sample, s=scores, g=grades:
                                           sklearn_kappas(s, g)(t))
            vectorised = vectorised_kappas(scores, grades)(sample)
            difference = np.abs(sampled - vectorised).max()  # NaN if either is undefined
            estimate = seconds / len(sample) * count
            notes.append(f"n={n:,}: on {len(sample)} sampled candidates max |cohen_kappa_score "
                         f"- vectorised kappa| = {difference:.1e}")
            if n <= args.full_max:
                plain_s, (plain_cuts, scored) = cpu_seconds(
                    lambda s=scores, g=grades: coordinate_search(s, sklearn_kappas(s, g)))
                plain = f"{plain_s:.2f}"
                notes.append(f"n={n:,}: plain search run to the end ({sum(map(len, scored)):,} "
                             f"calls); the sampled estimate would have said {estimate:.2f} s")
            else:
                plain_cuts, plain_s = replayed_cuts, estimate
                plain = f"~{plain_s:.0f} (extrapolated)"
            same = np.allclose(plain_cuts, fast_cuts, rtol=0, atol=1e-9)
            notes.append(f"n={n:,}: cut points {'identical' if same else 'DIFFER'}: fast "
                         f"{np.round(fast_cuts, 4).tolist()}, plain "
                         f"{np.round(plain_cuts, 4).tolist()}")
            print(f"| {n:,} | {fast_s:.3f} | {count:,} | {plain} | {plain_s / fast_s:,.0f}x | "
                  f"{sk_kappa(scores, grades, fast_cuts):.6f} | "
                  f"{sk_kappa(scores, grades, plain_cuts):.6f} |")
    print("", *notes, sep="\n")


if __name__ == "__main__":
    main()
