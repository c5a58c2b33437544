"""`drgrade predict --devices N [--num-nodes M]`: an archive graded by Lightning's predict loop.

Each rank grades its share of the photographs (Lightning's unrepeated distributed sampler)
and writes its rows to a part file beside `--out`; rank 0 then merges the parts into the one
CSV, in input order, with the columns and values of the single-process path (predict.py).
Across nodes, `--out` must be on a file system all nodes share.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from drgrade.atomic import atomic_write, make_folder
from drgrade.errors import DrgradeError
from drgrade.inference.grader import Prediction
from drgrade.inference.loader import is_onnx
from drgrade.inference.predict import (
    Loaded,
    PredictSummary,
    _check_kaggle_ids,
    csv_header,
    csv_row,
    find_images,
    load_input,
)
from drgrade.inference.torch_grader import TorchGrader
from drgrade.preprocessing import Preprocessor
from drgrade.quiet_lightning import quiet_lightning

quiet_lightning()

Indexed = tuple[int, Prediction]  # position in the input list, prediction


class Photographs(Dataset):
    """The photographs to grade, loaded as predict.py loads them: (index, *Loaded)."""

    def __init__(self, preprocessor: Preprocessor, images: list[Path]):
        self.preprocessor, self.images = preprocessor, images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[int, *Loaded]:
        return index, *load_input(self.preprocessor, self.images[index])


def _as_list(items: list) -> list:
    """Collate as a plain list: unusable files have no array to stack."""
    return items


class GradingPredictor(L.LightningModule):
    """Prediction only: a TorchGrader's network on whatever device Lightning gives it."""

    def __init__(self, grader: TorchGrader, images: list[Path], tta: bool):
        super().__init__()
        self.grader, self.images, self.tta = grader, images, tta
        self.network = grader.network  # registered, so that Lightning moves it

    def on_predict_start(self) -> None:
        self.grader.device = self.device  # the grader's tensors follow the network

    def predict_step(self, batch: list[tuple[int, *Loaded]]) -> list[Indexed]:
        names = [str(self.images[index]) for index, *_ in batch]
        predictions = [Prediction(name, error=error)
                       for name, (_, _, error, _) in zip(names, batch, strict=True)]
        graded = [k for k, (_, array, _, _) in enumerate(batch) if array is not None]
        if graded:
            inputs = np.stack([batch[k][1] for k in graded])
            results = self.grader.predictions([names[k] for k in graded],
                                              self.grader.outputs(inputs, self.tta))
            for k, result in zip(graded, results, strict=True):
                result.warning = batch[k][3]
                predictions[k] = result
        return [(index, p) for (index, *_), p in zip(batch, predictions, strict=True)]


def part_file(out: Path, rank: int) -> Path:
    """Where rank `rank` writes its rows (JSON lines) before rank 0 merges them."""
    return out.with_name(f".{out.name}.part{rank}.jsonl")


class PartWriter(BasePredictionWriter):
    """Writes each rank's predictions to its part file; rank 0 merges them into `out`."""

    def __init__(self, out: Path, regression: bool, kaggle: bool, write_interval: str):
        super().__init__(write_interval)
        self.out, self.regression, self.kaggle = out, regression, kaggle
        self.summary: PredictSummary | None = None  # set on rank 0 once merged

    def _append(self, rank: int, rows: list[Indexed]) -> None:
        with part_file(self.out, rank).open("a") as handle:
            handle.writelines(json.dumps([index, asdict(p)]) + "\n" for index, p in rows)

    def on_predict_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        part_file(self.out, trainer.global_rank).write_text("")  # nothing left from a past run

    def write_on_batch_end(self, trainer: L.Trainer, module: L.LightningModule,
                           prediction: list[Indexed], *args) -> None:
        self._append(trainer.global_rank, prediction)

    def write_on_epoch_end(self, trainer: L.Trainer, module: L.LightningModule,
                           predictions: list[list[Indexed]], batch_indices: list) -> None:
        self._append(trainer.global_rank, [row for batch in predictions for row in batch])

    def on_predict_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        trainer.strategy.barrier()  # every part file complete before rank 0 reads them
        if trainer.is_global_zero:
            self.summary = self.merge(trainer.world_size, len(module.images))
        trainer.strategy.barrier()  # no rank leaves while a part file is still being read

    def merge(self, world_size: int, total: int) -> PredictSummary:
        """The part files as one CSV in input order (then removed), and its summary."""
        parts = [part_file(self.out, rank) for rank in range(world_size)]
        rows: dict[int, Prediction] = {}
        for part in parts:
            for line in part.read_text().splitlines():
                index, fields = json.loads(line)
                rows[index] = Prediction(**fields)
        if len(rows) != total:
            raise DrgradeError(f"distributed predict: {total - len(rows)} of {total} "
                               f"photographs missing from the part files {parts}; run again")
        summary = PredictSummary(self.out, kaggle=self.kaggle)
        with atomic_write(self.out, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(csv_header(self.regression, self.kaggle, explain=False))
            for index in range(total):
                if summary.count(rows[index]):
                    writer.writerow(csv_row(rows[index], self.regression, self.kaggle))
        for part in parts:
            part.unlink()
        return summary


def predict_distributed(model: Path | str, paths: Sequence[Path | str], out: Path | str,
                        devices: int = 1, num_nodes: int = 1, accelerator: str = "auto",
                        batch_size: int = 16, tta: bool = False, kaggle: bool = False,
                        explain: Path | str | None = None, workers: int = 0,
                        write_interval: str = "batch", progress: bool = True
                        ) -> PredictSummary | None:
    """Grade `paths` into the CSV `out` on devices x num_nodes processes (ddp when > 1).

    Every rank runs this; rank 0 returns the summary, the others None.
    """
    if is_onnx(model):
        raise DrgradeError(f"{model}: --devices/--num-nodes run the PyTorch checkpoint; give "
                           "the run folder or .ckpt, or drop --devices to grade the .onnx "
                           "in one process")
    if explain is not None:
        raise DrgradeError("--explain writes heat maps in one process; drop --devices and "
                           "--num-nodes to write them")
    for option, value, least in (("--devices", devices, 1), ("--num-nodes", num_nodes, 1),
                                 ("--batch-size", batch_size, 1), ("--workers", workers, 0)):
        if value < least:
            raise DrgradeError(f"{option} must be at least {least}, got {value}")
    # Loaded on the CPU: Lightning moves the network to each rank's own device.
    grader = TorchGrader.from_checkpoint(model, device="cpu")
    if grader.card.binocular:
        # Ranks see disjoint shares of the photographs, so an eye's fellow may be elsewhere.
        raise DrgradeError(f"{model}: a binocular model pairs each eye with its fellow in one "
                           "process; drop --devices and --num-nodes to grade with it")
    images = find_images(paths)
    if kaggle:
        _check_kaggle_ids(images)
    out = Path(out)
    make_folder(out.parent)
    writer = PartWriter(out, grader.is_regression, kaggle, write_interval)
    trainer = L.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                        strategy="ddp" if devices * num_nodes > 1 else "auto",
                        callbacks=[writer], logger=False, enable_checkpointing=False,
                        enable_model_summary=False,
                        # As predict.py's tqdm: a progress bar on a terminal, none in a log.
                        enable_progress_bar=progress and sys.stdout.isatty())
    loader = DataLoader(Photographs(grader.preprocessor, images), batch_size=batch_size,
                        num_workers=workers, collate_fn=_as_list)
    # Batch-wise writing keeps nothing in memory; the epoch writer needs the predictions.
    trainer.predict(GradingPredictor(grader, images, tta), loader,
                    return_predictions=write_interval == "epoch")
    return writer.summary
