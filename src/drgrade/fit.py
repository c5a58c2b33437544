"""Train one config into a run folder with Lightning's Trainer (checkpoints, resume, DDP)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar

from drgrade.atomic import write_text
from drgrade.checkpoint_io import AtomicCheckpointIO, remove_partial_saves, resumable_checkpoint
from drgrade.config import TrainConfig
from drgrade.data.datamodule import GradingDataModule
from drgrade.divergence import DivergenceGuard
from drgrade.errors import DrgradeError
from drgrade.loggers import logging_callbacks, make_logger
from drgrade.plots import plot_curves
from drgrade.quiet_lightning import quiet_lightning
from drgrade.run_folder import (
    BEST_CHECKPOINT,
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
    LOG_FILE,
    last_checkpoint,
    write_run_files,
)
from drgrade.training import GradingModule, RecordedEarlyStopping

quiet_lightning()
# --resume writes into the run's own checkpoint folder on purpose.
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


class EpochLog(Callback):
    """Writes RUN/log.csv, one row per epoch: the source of the training curves."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        row = {"epoch": trainer.current_epoch,
               "lr": trainer.optimizers[0].param_groups[0]["lr"]}
        row |= {k: float(v) for k, v in sorted(trainer.callback_metrics.items())}
        log = pd.read_csv(self.path) if self.path.is_file() else pd.DataFrame()
        # A resumed run rewrites the epochs it repeats.
        if len(log):
            log = log[log["epoch"] < row["epoch"]]
        write_text(self.path, pd.concat([log, pd.DataFrame([row])]).to_csv(index=False))


def class_weights(counts: np.ndarray) -> list[float]:
    """Inverse-frequency weights, mean 1 over the grades present."""
    present = counts > 0
    weights = np.where(present, 1.0 / np.maximum(counts, 1), 0.0)
    return (weights * present.sum() / weights.sum()).tolist()


def make_trainer(config: TrainConfig, run: Path, progress: bool = True,
                 extra_callbacks: Sequence[Callback] = ()) -> L.Trainer:
    """A Lightning Trainer writing checkpoints and the epoch log into `run`."""
    folder = run / CHECKPOINT_DIR
    # best.ckpt is for evaluating and using the model: weights and metadata, no optimiser
    # state (a third of last.ckpt's size with AdamW). Resuming reads last.ckpt.
    best = ModelCheckpoint(dirpath=folder, filename=Path(BEST_CHECKPOINT).stem,
                           monitor="val_kappa", mode="max", save_weights_only=True,
                           enable_version_counter=False)
    # Lightning's save_last only saves when a top-k checkpoint was saved in the same step,
    # so the latest state gets a checkpointer of its own, overwritten every epoch.
    latest = ModelCheckpoint(dirpath=folder, filename=Path(LAST_CHECKPOINT).stem,
                             monitor=None, save_top_k=1, enable_version_counter=False)
    callbacks: list[Callback] = [best, latest, EpochLog(run / LOG_FILE),
                                 DivergenceGuard(config.lr, config.gradient_clip_val),
                                 *logging_callbacks(config),
                                 *extra_callbacks]
    if config.early_stopping_patience is not None:
        callbacks.append(RecordedEarlyStopping(run, config.early_stopping_patience,
                                               config.early_stopping_min_delta))
    if progress:
        callbacks.append(TQDMProgressBar())
    return L.Trainer(
        default_root_dir=run, max_epochs=config.epochs, accelerator=config.accelerator,
        devices=config.devices, num_nodes=config.num_nodes, strategy=config.strategy,
        precision=config.precision, deterministic=config.deterministic,
        logger=make_logger(config, run),
        callbacks=callbacks, num_sanity_val_steps=0, enable_progress_bar=progress,
        plugins=[AtomicCheckpointIO()], gradient_clip_val=config.gradient_clip_val,
        enable_model_summary=False, limit_train_batches=config.max_train_batches or 1.0,
    )


def train(config: TrainConfig, resume: bool = False, progress: bool = True,
          extra_callbacks: Sequence[Callback] = ()) -> Path:
    """Train `config` into its run folder (continuing from last.ckpt if `resume`).

    `extra_callbacks` join drgrade's own (benchmarks add timers and more checkpointers).
    """
    run = Path(config.out)
    last = last_checkpoint(run)
    remove_partial_saves(run)
    if resume:
        last = resumable_checkpoint(run)
    elif last.is_file():
        raise DrgradeError(f"{run} already holds a run; continue it with --resume "
                           "or choose another --out")
    L.seed_everything(config.seed, workers=True, verbose=False)
    data = GradingDataModule(config)
    weights = class_weights(data.class_counts()) if config.class_weights else None
    module = GradingModule(config, data.model_card(), weights)
    write_run_files(run, config.to_dict(), data.manifest.fingerprint(), resume)
    trainer = make_trainer(config, run, progress, extra_callbacks)
    trainer.fit(module, datamodule=data, ckpt_path=last if resume else None)
    if trainer.is_global_zero:
        plot_curves(pd.read_csv(run / LOG_FILE), run / "figures" / "curves.png",
                    title=f"{config.arch} ({'pretrained' if config.pretrained else 'scratch'})")
    return run
