"""`drgrade predict`: grade raw photographs in batches into a CSV, optionally with heat maps.

Photographs are decoded and cropped (about 30 ms each at 512 px) in `--workers` processes
while the model grades the batch before: that takes decoding off the critical
path when the model runs on a GPU. On a 2-core CPU the model dominates and workers neither
help nor hurt (benchmarks/RESULTS.md). Unusable files become rows with the reason in
`error`; the run goes on. An interrupted run is continued by the next (resume.py).
Nothing here imports torch: an ONNX model grades without it.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from drgrade.atomic import make_folder, refuse_folder, write_error
from drgrade.data.manifest import fellow_indices
from drgrade.data.photographs import IMAGE_SUFFIXES
from drgrade.data.sources import eyepacs_identity
from drgrade.errors import DrgradeError
from drgrade.grades import GRADE_NAMES, NUM_GRADES
from drgrade.inference.grader import Batch, GraderBase, Prediction, failure_reason
from drgrade.inference.resume import ResumablePredictions, run_key
from drgrade.preprocessing import Preprocessor


def _walk(folder: Path) -> list[Path]:
    """Image files under `folder`, sorted. Broken links and sub-folders that cannot be read
    are kept too, so that each becomes a row with its reason instead of vanishing."""
    entries: list[Path] = []
    unreadable: list[Path] = []
    for root, _, files in os.walk(folder, followlinks=True,
                                  onerror=lambda error: unreadable.append(Path(error.filename))):
        entries += [Path(root) / name for name in files
                    if Path(name).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(entries + unreadable)


def find_images(paths: Sequence[Path | str]) -> list[Path]:
    """Files given, plus image files found recursively in folders given; no repeats."""
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        if path.is_dir():
            found.update((p, None) for p in _walk(path))
        elif path.exists() or path.is_symlink():
            found[path] = None  # given by name: graded, or listed with the reason it fails
        else:
            raise DrgradeError(f"{path}: no such file or folder (PATH arguments of predict)")
    if not found:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise DrgradeError(f"no images in {', '.join(map(str, paths))} (looked for {suffixes})")
    return list(found)


Loaded = tuple[np.ndarray | None, str | None, str | None]  # input, failure, warning


def load_input(preprocessor: Preprocessor, path: Path) -> Loaded:
    """The network input of one photograph and any warning, or the reason it cannot be graded."""
    try:
        photograph = preprocessor.photograph(path)
        return preprocessor.transform(photograph.image), None, photograph.warning
    except Exception as error:  # one odd file must not stop a long run; it is listed
        return None, failure_reason(error), None


def _loaded(preprocessor: Preprocessor, batches: list[list[Path]], workers: int
            ) -> Iterator[list[Loaded]]:
    """Loaded inputs batch by batch; with workers, the next batch loads while this one is
    graded (one batch ahead, so memory stays bounded on any archive)."""
    load = partial(load_input, preprocessor)
    if workers == 0 or len(batches) == 1:  # nothing to load ahead: a worker only costs
        yield from ([load(path) for path in batch] for batch in batches)
        return
    # spawn, not fork: the parent may hold threads (onnxruntime, torch) that fork would copy.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pending = pool.map_async(load, batches[0])
        for k in range(len(batches)):
            loaded = pending.get()
            if k + 1 < len(batches):
                pending = pool.map_async(load, batches[k + 1])
            yield loaded


def fellow_images(images: list[Path]) -> dict[Path, Path]:
    """Each photograph named `<patient>_<left|right>` whose other eye is among `images`:
    that other eye's file."""
    identities = [eyepacs_identity(path.stem) for path in images]
    fellows = fellow_indices([i["patient"] for i in identities], [i["eye"] for i in identities])
    return {path: images[k] for path, k in zip(images, fellows, strict=True) if k >= 0}


def iter_batches(grader: GraderBase, images: list[Path], batch_size: int = 16,
                 tta: bool = False, workers: int = 0, start: int = 0) -> Iterator[Batch]:
    """Predictions batch by batch, in the order of `images`, from `images[start]` on.

    A binocular model grades each photograph with its fellow eye (`fellow_images`, among
    all of `images`), loaded with its batch wherever it falls; one without a usable fellow
    is its own.
    """
    fellows = fellow_images(images) if grader.card.binocular else {}
    batches = [images[i:i + batch_size] for i in range(start, len(images), batch_size)]
    loads = [list(dict.fromkeys(batch + [fellows[p] for p in batch if p in fellows]))
             for batch in batches]
    for batch, load, items in zip(batches, loads, _loaded(grader.preprocessor, loads, workers),
                                  strict=True):
        loaded = dict(zip(load, items, strict=True))
        names = [str(path) for path in batch]
        predictions = [Prediction(str(path), error=loaded[path][1]) for path in batch]
        graded = [k for k, path in enumerate(batch) if loaded[path][0] is not None]
        if not graded:
            yield Batch(predictions)
            continue
        inputs = np.stack([loaded[batch[k]][0] for k in graded])
        partners, fellow_inputs = None, None
        if grader.card.binocular:
            partners = [_partner(batch[k], fellows, loaded) for k in graded]
            fellow_inputs = np.stack([loaded[path][0] for path in partners])
            for prediction in predictions:  # a failed row names no fellow
                prediction.fellow = ""
        results = grader.predictions([names[k] for k in graded],
                                     grader.outputs(inputs, tta, fellow_inputs))
        for j, (k, result) in enumerate(zip(graded, results, strict=True)):
            result.warning = loaded[batch[k]][2]
            if partners is not None:
                result.fellow = str(partners[j])
            predictions[k] = result
        yield Batch(predictions, inputs, graded, fellow_inputs)


def _partner(path: Path, fellows: dict[Path, Path], loaded: dict[Path, Loaded]) -> Path:
    """The fellow a photograph is graded with: its other eye if that loaded, else itself."""
    fellow = fellows.get(path)
    return fellow if fellow is not None and loaded[fellow][0] is not None else path


@dataclass
class PredictSummary:
    """What a predict run did."""

    out: Path
    graded: int = 0
    failed: list[Prediction] = field(default_factory=list)
    grades: Counter = field(default_factory=Counter)
    warned: list[Prediction] = field(default_factory=list)  # graded, with a caveat
    heat_maps: Path | None = None
    kaggle: bool = False  # failures are then only printed, so all of them are
    resumed: str = ""  # what became of an earlier unfinished run, if there was one

    def state(self) -> dict:
        """The counts so far, as JSON for a run that may be resumed."""
        return {"graded": self.graded, "grades": dict(self.grades),
                "failed": [[p.image, p.error] for p in self.failed],
                "warned": [[p.image, p.warning] for p in self.warned]}

    def restore(self, state: dict) -> None:
        """Continue from `state()` of an interrupted run."""
        self.graded = state["graded"]
        self.grades = Counter({int(g): n for g, n in state["grades"].items()})
        self.failed = [Prediction(image, error=error) for image, error in state["failed"]]
        self.warned = [Prediction(image, warning=warning) for image, warning in state["warned"]]

    def count(self, p: Prediction) -> bool:
        """Count one prediction; whether it gets a row (a Kaggle submission wants a level
        for every row, so its failures are only printed)."""
        if p.grade is None:
            self.failed.append(p)
            return not self.kaggle
        self.graded += 1
        self.grades[p.grade] += 1
        if p.warning:
            self.warned.append(p)
        return True

    def __str__(self) -> str:
        counts = ", ".join(f"{g} {GRADE_NAMES[g]}: {self.grades[g]}" for g in range(NUM_GRADES))
        lines = [self.resumed] if self.resumed else []
        lines.append(f"graded {self.graded}, failed {len(self.failed)} ({counts})")
        shown = self.failed if self.kaggle else self.failed[:10]
        lines += [f"  failed: {p.image}: {p.error}" for p in shown]
        if len(self.failed) > len(shown):
            lines.append(f"  ... and {len(self.failed) - len(shown)} more (see the error column)")
        for p in self.warned[:10]:
            lines.append(f"  warning: {p.image}: {p.warning}")
        if len(self.warned) > 10:
            lines.append(f"  ... and {len(self.warned) - 10} more warnings"
                         f"{'' if self.kaggle else ' (see the warning column)'}")
        lines.append(f"written: {self.out}")
        if self.heat_maps:
            lines.append(f"heat maps: {self.heat_maps}")
        return "\n".join(lines)


def csv_header(regression: bool, kaggle: bool, explain: bool, binocular: bool = False
               ) -> list[str]:
    """Columns of the predictions CSV (binocular models: the fellow graded with each)."""
    if kaggle:
        return ["image", "level"]
    values = ["score"] if regression else [f"p{g}" for g in range(NUM_GRADES)]
    return ["image", "grade", "grade_name", *values, "referable", "error", "warning"] + (
        ["fellow"] if binocular else []) + (["heat_map"] if explain else [])


def csv_row(p: Prediction, regression: bool, kaggle: bool = False,
            heat_map: str | None = None) -> list:
    """One CSV row (Kaggle: file stem and grade); empty cells where there is no grade."""
    if kaggle:
        return [Path(p.image).stem, p.grade]
    if p.grade is None:
        values = [""] * (1 if regression else NUM_GRADES)
    elif regression:
        values = [f"{p.score:.6g}"]
    else:
        values = [f"{v:.6g}" for v in p.probabilities]
    row = [p.image, p.grade, p.grade_name, *values, p.referable, p.error or "", p.warning or ""]
    if p.fellow is not None:
        row.append(p.fellow)
    return row if heat_map is None else [*row, heat_map]


def _check_kaggle_ids(images: list[Path]) -> None:
    stems = Counter(p.stem for p in images)
    repeated = [s for s, n in stems.items() if n > 1]
    if repeated:
        raise DrgradeError(
            f"--kaggle: image ids must be unique, but {len(repeated)} file names repeat in "
            f"different folders (e.g. {repeated[0]!r}); predict each folder separately"
        )


def predict(grader: GraderBase, paths: Sequence[Path | str], out: Path | str,
            batch_size: int = 16, tta: bool = False, kaggle: bool = False,
            explain: Path | str | None = None, explain_method: str = "gradcam",
            workers: int = 0, progress: bool = True) -> PredictSummary:
    """Grade the photographs in `paths` into the CSV `out`; heat maps into `explain`.

    `workers` processes load photographs (0: in this process, which forks nothing).
    """
    if batch_size < 1:
        raise DrgradeError(f"--batch-size must be at least 1, got {batch_size}")
    if workers < 0:
        raise DrgradeError(f"--workers must be 0 (load in this process) or more, got {workers}")
    images = find_images(paths)
    if kaggle:
        _check_kaggle_ids(images)
    heat_map_writer = None
    if explain is not None:
        from drgrade.inference.explain import HeatMapWriter

        heat_map_writer = HeatMapWriter(grader, Path(explain), explain_method)
    out = refuse_folder(Path(out))
    make_folder(out.parent)
    summary = PredictSummary(out, heat_maps=Path(explain) if explain is not None else None,
                             kaggle=kaggle)
    header = csv_header(grader.is_regression, kaggle, heat_map_writer is not None,
                        grader.card.binocular)
    # Rows go to OUT.part as they come, a rerun continues an interrupted run, and only a
    # finished run gets the real name.
    rows = ResumablePredictions(out, run_key(grader, images, {
        "tta": tta, "kaggle": kaggle, "header": header, "explain": explain_method
        if explain is not None else None}))
    done, state = rows.start()
    if done:
        summary.restore(state)
        if heat_map_writer is not None and not kaggle:  # Kaggle's ids never repeat
            heat_map_writer.continue_after(r["image"] for r in rows.rows() if r["heat_map"])
    summary.resumed = rows.note
    try:
        # disable=None: a progress bar on a terminal, none in a log file.
        with rows.part.open("a" if done else "w", newline="") as handle, tqdm(
                total=len(images), initial=done, desc="predict", unit="img",
                disable=None if progress else True) as bar:
            writer = csv.writer(handle)
            if not done:
                writer.writerow(header)
            for batch in iter_batches(grader, images, batch_size, tta, workers, start=done):
                maps = heat_map_writer.write(batch) if heat_map_writer else {}
                for k, p in enumerate(batch.predictions):
                    if not summary.count(p):
                        continue
                    heat_map = maps.get(k, "") if heat_map_writer else None
                    writer.writerow(csv_row(p, grader.is_regression, kaggle, heat_map))
                done += len(batch.predictions)
                rows.save(handle, done, summary.state)
                bar.update(len(batch.predictions))
    except OSError as error:  # the rows file itself: photographs fail as rows, not here
        raise rows.kept(write_error(rows.part, error)) from None
    rows.finish()
    return summary
