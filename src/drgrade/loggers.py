"""Training logs beside RUN/log.csv: TensorBoard (RUN/tensorboard/) or Weights & Biases.

The logger gets every metric the module logs per epoch, plus what the callbacks here add:
the train loss per step, the learning rate per epoch and the validation confusion matrix as
an image per validation epoch. A resumed run writes into the same folder, continuing its
steps (TensorBoard drops the points of a repeated, interrupted epoch).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from importlib.util import find_spec
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from PIL import Image

from drgrade.config import TrainConfig
from drgrade.errors import DrgradeError
from drgrade.plots import plot_confusion

TENSORBOARD_DIR = "tensorboard"  # RUN/tensorboard/: event files, one more per resume
CONFUSION_TAG = "val_confusion"
STEP_LOSS = "train_loss_step"

# TrainLossSteps logs every step whatever log_every_n_steps says, so this advice is wrong here.
warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller than "
                                          r"the logging interval")


def logger_kind(choice: str) -> str:
    """What the `logger` option means on this machine: auto -> tensorboard if installed,
    else csv."""
    if choice == "auto":
        return "tensorboard" if find_spec("tensorboard") else "csv"
    return choice


def make_logger(config: TrainConfig, run: Path) -> Logger | bool:
    """The Lightning logger of `config.logger` writing into `run`; False for log.csv only."""
    kind = logger_kind(config.logger)
    if kind == "csv":
        return False
    if kind == "tensorboard":
        if not find_spec("tensorboard"):
            raise DrgradeError("logger: tensorboard is not installed; `pip install tensorboard`"
                               ", or choose --logger csv")
        # A fixed version keeps one folder, so --resume continues the same logs.
        return TensorBoardLogger(save_dir=run, name=TENSORBOARD_DIR, version="",
                                 default_hp_metric=False)
    if not find_spec("wandb"):
        raise DrgradeError("logger: wandb is not installed; `pip install wandb`, or choose "
                           "--logger tensorboard or csv")
    # The run's id follows from its folder, so --resume continues the same wandb run. Offline
    # (files in RUN/wandb/, nothing sent) unless the user chose a mode through WANDB_MODE.
    run_id = hashlib.sha256(str(Path(run).resolve()).encode()).hexdigest()[:16]
    return WandbLogger(save_dir=run, project="drgrade", name=Path(run).name, id=run_id,
                       offline="WANDB_MODE" not in os.environ)


def logging_callbacks(config: TrainConfig) -> list[Callback]:
    """The callbacks feeding the logger (none with log.csv alone: they need a logger)."""
    if logger_kind(config.logger) == "csv":
        return []
    # Per epoch: Lightning's per-step interval obeys log_every_n_steps (50), which would
    # leave short runs without a single point.
    return [LearningRate(logging_interval="epoch"), TrainLossSteps(), ConfusionImage()]


class LearningRate(LearningRateMonitor):
    """Lightning's learning-rate monitor, for the logger only."""

    def on_train_epoch_start(self, trainer: L.Trainer, *args, **kwargs) -> None:
        super().on_train_epoch_start(trainer, *args, **kwargs)
        # Lightning also copies the rate into callback_metrics, which EpochLog writes to
        # log.csv: that file keeps its own `lr` column only.
        for name in self.lrs:
            trainer.callback_metrics.pop(name, None)


class TrainLossSteps(Callback):
    """Logs the train loss of every step (the module logs it per epoch, as log.csv needs)."""

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs,
                           batch, batch_idx: int) -> None:
        for logger in trainer.loggers:
            logger.log_metrics({STEP_LOSS: float(outputs["loss"])}, step=trainer.global_step)


class ConfusionImage(Callback):
    """Logs the validation confusion matrix (row-normalised) as an image each validation."""

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        matrix = module.confusion.get("val")
        if matrix is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        image = confusion_image(matrix, f"val, epoch {trainer.current_epoch + 1}: "
                                        "confusion matrix (row-normalised)")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(CONFUSION_TAG, image, trainer.global_step,
                                            dataformats="HWC")
            elif isinstance(logger, WandbLogger):
                logger.log_image(CONFUSION_TAG, [image], step=trainer.global_step)


def confusion_image(matrix: np.ndarray, title: str) -> np.ndarray:
    """The figure `drgrade evaluate` draws, as an RGB array (H, W, 3)."""
    with tempfile.TemporaryDirectory() as folder:
        path = plot_confusion(matrix, Path(folder) / "confusion.png", normalize=True,
                              title=title)
        with Image.open(path) as png:
            return np.asarray(png.convert("RGB"))
