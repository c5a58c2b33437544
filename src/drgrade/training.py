"""The LightningModule: loss, optimiser, schedule and per-epoch metrics. The loop is Lightning's.

It wraps a `GradingNetwork` for training only. Each checkpoint carries the network's model
card (with the cut points and screening threshold fitted on validation at that epoch) and
the model hyperparameters; inference reads the card through `drgrade.checkpoint`, never
this module.
"""

from __future__ import annotations

import bisect
import math
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from drgrade import __version__
from drgrade.agreement import confusion_matrix, quadratic_kappa
from drgrade.config import TrainConfig
from drgrade.grades import NUM_GRADES
from drgrade.model_card import CHECKPOINT_KEY, ModelCard
from drgrade.network import GradingNetwork
from drgrade.operating_points import fit_cut_points, screening_threshold
from drgrade.run_folder import record_early_stop

# The options that shape the optimisation, saved as the module's hyperparameters.
OPTIMISATION_OPTIONS = ("optimizer", "lr", "momentum", "nesterov", "weight_decay", "scheduler",
                        "step_epochs", "step_gamma", "milestones", "plateau_patience",
                        "warmup_epochs", "loss", "focal_gamma", "label_smoothing",
                        "class_weights", "epochs")

# Per-image losses of the regression head, by their `loss` name.
REGRESSION_LOSSES = {"mse": F.mse_loss, "smooth_l1": F.smooth_l1_loss, "mae": F.l1_loss}


def focal_loss(logits: torch.Tensor, grades: torch.Tensor, gamma: float,
               weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Multiclass focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_true)^gamma."""
    per_image = F.cross_entropy(logits, grades, weight=weight, label_smoothing=label_smoothing,
                                reduction="none")
    p_true = logits.softmax(dim=1).gather(1, grades[:, None]).squeeze(1)
    focused = (1 - p_true) ** gamma * per_image
    # The same normalisation as F.cross_entropy's mean, so gamma 0 is cross-entropy.
    return focused.sum() / (weight[grades].sum() if weight is not None else len(grades))


class RecordedEarlyStopping(EarlyStopping):
    """Lightning's early stopping on val_kappa that notes in the run folder when it stopped."""

    def __init__(self, run: Path, patience: int, min_delta: float):
        super().__init__(monitor="val_kappa", mode="max", patience=patience,
                         min_delta=min_delta)
        self.run = run

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Lightning's convention: stopped_epoch stays 0 unless this callback stopped the run.
        if self.stopped_epoch > 0 and trainer.is_global_zero:
            record_early_stop(self.run, self.stopped_epoch, self.stopping_reason_message
                              or "another process's val_kappa stopped it")


class QuadraticKappa(MulticlassConfusionMatrix):
    """Quadratic weighted kappa accumulated over steps (and synced across processes) as a
    confusion matrix, computed by drgrade's one kappa formula."""

    def compute(self) -> torch.Tensor:
        return torch.tensor(float(quadratic_kappa(super().compute().cpu().numpy())))


class GradingModule(L.LightningModule):
    """Trains a `GradingNetwork` with the configured loss under the configured schedule."""

    def __init__(self, config: TrainConfig, card: ModelCard, class_weights: list | None = None):
        super().__init__()
        self.config = config
        self.card = card
        self.save_hyperparameters({
            "network": {"arch": config.arch, "head": config.head,
                        "pretrained": config.pretrained, "channels_last": config.channels_last},
            "optimisation": {name: config.to_dict()[name] for name in OPTIMISATION_OPTIONS},
            "class_weight_values": class_weights,
        })
        self.network = GradingNetwork(config.arch, config.head, pretrained=config.pretrained,
                                      weights_file=config.weights,
                                      channels_last=config.channels_last,
                                      image_size=card.image_size, binocular=card.binocular)
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)
        # Train metrics accumulate over steps (torchmetrics syncs them across processes);
        # val/test metrics are computed at epoch end, after regression cut points are fitted.
        self.train_accuracy = MulticlassAccuracy(NUM_GRADES, average="micro")
        self.train_kappa = QuadraticKappa(NUM_GRADES)
        self._outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"val": [], "test": []}
        # The latest epoch's confusion matrix per stage, for drgrade.loggers.ConfusionImage.
        self.confusion: dict[str, np.ndarray] = {}

    def current_card(self) -> ModelCard:
        """The model card with this epoch's validation-fitted cut points and threshold."""
        return self.card.with_values(cut_points=tuple(self.network.thresholds.tolist()))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = self.current_card().to_dict()
        # Lets a later drgrade name the version a checkpoint it cannot read came from.
        checkpoint["drgrade_version"] = __version__

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # --resume: the screening threshold of the epoch resumed from.
        if CHECKPOINT_KEY in checkpoint:
            saved = checkpoint[CHECKPOINT_KEY].get("screening_threshold")
            self.card = self.card.with_values(screening_threshold=saved)

    def forward(self, images: torch.Tensor, fellows: torch.Tensor | None = None) -> torch.Tensor:
        """Raw outputs: logits (N, 5) or regression scores (N,)."""
        return self.network(images, fellows)

    def loss(self, outputs: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
        """The configured loss, weighted by grade when class weights are given."""
        name, weights = self.config.loss_name(), self.class_weights
        if name == "cross_entropy":
            return F.cross_entropy(outputs, grades, weight=weights,
                                   label_smoothing=self.config.label_smoothing)
        if name == "focal":
            return focal_loss(outputs, grades, self.config.focal_gamma, weights,
                              self.config.label_smoothing)
        per_image = REGRESSION_LOSSES[name]
        if weights is None:
            return per_image(outputs, grades.float())
        image_weights = weights[grades]
        losses = per_image(outputs, grades.float(), reduction="none")
        return (image_weights * losses).sum() / image_weights.sum()

    def _step(self, batch, stage: str) -> torch.Tensor:
        *inputs, grades = batch  # (images, grades), or (images, fellows, grades) binocular
        outputs = self(*inputs)
        loss = self.loss(outputs, grades)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, sync_dist=True,
                 batch_size=len(grades), add_dataloader_idx=False)
        if stage == "train":
            predicted = self.network.decode(outputs.detach())
            self.train_accuracy(predicted, grades)
            self.train_kappa(predicted, grades)
            self.log("train_accuracy", self.train_accuracy, on_step=False, on_epoch=True)
            self.log("train_kappa", self.train_kappa, on_step=False, on_epoch=True)
        else:
            self._outputs[stage].append((outputs.detach().float(), grades))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._step(batch, "val" if dataloader_idx == 0 else "test")

    def on_validation_epoch_end(self) -> None:
        # Validation first: for regression it refits the cut points the other stages use.
        for stage in ("val", "test"):
            self._log_epoch_metrics(stage)

    def _log_epoch_metrics(self, stage: str) -> None:
        if not self._outputs[stage]:
            return
        outputs = torch.cat([o for o, _ in self._outputs[stage]])
        grades = torch.cat([g for _, g in self._outputs[stage]])
        self._outputs[stage].clear()
        if self.trainer.world_size > 1:
            # Every process scores the whole split, so all agree on the cut points.
            outputs = self.all_gather(outputs).flatten(0, 1)
            grades = self.all_gather(grades).flatten(0, 1)
        if stage == "val" and not self.trainer.sanity_checking:
            self._fit_operating_points(outputs, grades)
        predicted = self.network.decode(outputs).cpu().numpy()
        confusion = confusion_matrix(grades.cpu().numpy(), predicted)
        self.confusion[stage] = confusion
        total = confusion.sum()
        # Kappa is undefined (NaN) when a single grade occurs; count it as chance level (0)
        # so checkpoint selection still works.
        self.log(f"{stage}_accuracy", float(np.trace(confusion) / total) if total else 0.0)
        self.log(f"{stage}_kappa", float(np.nan_to_num(quadratic_kappa(confusion), nan=0.0)))

    def _fit_operating_points(self, outputs: torch.Tensor, grades: torch.Tensor) -> None:
        """Cut points (regression) and the screening threshold, from this epoch's validation."""
        truth = grades.cpu().numpy()
        if self.network.is_regression:
            cuts = fit_cut_points(outputs.cpu().numpy(), truth)
            self.network.thresholds.copy_(torch.as_tensor(cuts, dtype=torch.float32))
        score = self.network.referable_score(self.network.probabilities(outputs))
        threshold = screening_threshold(truth, score.cpu().numpy(), self.card.screening_target)
        self.card = self.card.with_values(screening_threshold=threshold)

    def configure_optimizers(self):
        config = self.config
        if config.optimizer == "sgd":
            optimizer = torch.optim.SGD(self.parameters(), lr=config.lr, momentum=config.momentum,
                                        nesterov=config.nesterov and config.momentum > 0,
                                        weight_decay=config.weight_decay)
        else:
            adam = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
            optimizer = adam(self.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        if config.scheduler == "plateau":
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=config.step_gamma,
                patience=config.plateau_patience)
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": plateau, "monitor": "val_kappa",
                                     "interval": "epoch"}}
        steps_per_epoch = max(1, self.trainer.estimated_stepping_batches // config.epochs)
        schedule = lr_factor(config, steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def lr_factor(config: TrainConfig, steps_per_epoch: int):
    """The schedule as a function of the optimiser step: warm-up, then cosine or decays."""
    warmup = config.warmup_epochs * steps_per_epoch
    total = config.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.scheduler == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        epoch = step // steps_per_epoch
        if config.scheduler == "step":
            return config.step_gamma ** (epoch // config.step_epochs)
        if config.scheduler == "multistep":
            return config.step_gamma ** bisect.bisect_right(config.milestones, epoch)
        if config.scheduler == "exponential":
            return config.step_gamma ** epoch
        return 1.0

    return factor
