"""The LightningModule: loss, optimiser, schedule and per-epoch metrics. The loop is Lightning's."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassCohenKappa
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_cohen_kappa

from drgrade import __version__
from drgrade.config import TrainConfig
from drgrade.errors import DrgradeError
from drgrade.grades import NUM_GRADES
from drgrade.models import DEFAULT_THRESHOLDS, build_model, decode_grades, fit_thresholds


class GradingModule(L.LightningModule):
    """A DR grader: a torchvision backbone with a classification or regression head.

    Hyperparameters (the config, class weights, preprocessing) are saved in every
    checkpoint, so a checkpoint alone says how to rebuild and feed the model.
    """

    def __init__(self, config: dict, preprocessing: dict, class_weights: list | None = None,
                 load_pretrained: bool = True):
        super().__init__()
        self.save_hyperparameters(ignore=["load_pretrained"])
        self.config = TrainConfig(**config)
        # Rebuilding from a checkpoint needs no ImageNet weights: the state_dict replaces them.
        self.model = build_model(
            self.config.arch,
            pretrained=self.config.pretrained and load_pretrained,
            head=self.config.head,
            weights_file=self.config.weights if load_pretrained else None,
        )
        if self.config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.register_buffer("class_weights", weights, persistent=False)
        # Regression cut points, refitted on validation each epoch and saved with the weights.
        self.register_buffer("thresholds", torch.tensor(DEFAULT_THRESHOLDS))
        # Train metrics accumulate over steps (torchmetrics syncs them across processes);
        # val/test metrics are computed at epoch end, after regression cut points are fitted.
        self.train_accuracy = MulticlassAccuracy(NUM_GRADES, average="micro")
        self.train_kappa = MulticlassCohenKappa(NUM_GRADES, weights="quadratic")
        self._outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"val": [], "test": []}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lets a later drgrade name the version a checkpoint it cannot read came from.
        checkpoint["drgrade_version"] = __version__

    @property
    def is_regression(self) -> bool:
        return self.config.head == "regression"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw outputs: logits (N, 5) or regression scores (N,)."""
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        out = self.model(images)
        return out.squeeze(1) if self.is_regression else out

    def decode(self, outputs: torch.Tensor) -> torch.Tensor:
        """Grades 0-4 from raw outputs."""
        return decode_grades(outputs, self.config.head, self.thresholds)

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        """Per-grade probabilities (classification) or the score itself (regression)."""
        return outputs if self.is_regression else outputs.softmax(dim=1)

    def loss(self, outputs: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
        if self.is_regression:
            return F.mse_loss(outputs, grades.float())
        return F.cross_entropy(outputs, grades, weight=self.class_weights,
                               label_smoothing=self.config.label_smoothing)

    def _step(self, batch, stage: str) -> torch.Tensor:
        images, grades = batch
        outputs = self(images)
        loss = self.loss(outputs, grades)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, sync_dist=True,
                 batch_size=len(grades), add_dataloader_idx=False)
        if stage == "train":
            predicted = self.decode(outputs.detach())
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
        if stage == "val" and self.is_regression and not self.trainer.sanity_checking:
            cuts = fit_thresholds(outputs.cpu().numpy(), grades.cpu().numpy())
            self.thresholds.copy_(torch.as_tensor(cuts, dtype=self.thresholds.dtype))
        predicted = self.decode(outputs)
        accuracy = multiclass_accuracy(predicted, grades, NUM_GRADES, average="micro")
        kappa = multiclass_cohen_kappa(predicted, grades, NUM_GRADES, weights="quadratic")
        # Kappa is undefined (NaN) when a single grade occurs; count it as chance level (0)
        # so checkpoint selection still works.
        self.log(f"{stage}_accuracy", accuracy)
        self.log(f"{stage}_kappa", torch.nan_to_num(kappa, nan=0.0))

    def configure_optimizers(self):
        config = self.config
        if config.optimizer == "sgd":
            optimizer = torch.optim.SGD(self.parameters(), lr=config.lr, momentum=config.momentum,
                                        nesterov=config.nesterov and config.momentum > 0,
                                        weight_decay=config.weight_decay)
        else:
            optimizer = torch.optim.AdamW(self.parameters(), lr=config.lr,
                                          weight_decay=config.weight_decay)
        steps_per_epoch = max(1, self.trainer.estimated_stepping_batches // config.epochs)
        schedule = lr_factor(config, steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def lr_factor(config: TrainConfig, steps_per_epoch: int):
    """The schedule as a function of the optimiser step: warm-up, then cosine or steps."""
    warmup = config.warmup_epochs * steps_per_epoch
    total = config.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.scheduler == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if config.scheduler == "step":
            return config.step_gamma ** (step // (config.step_epochs * steps_per_epoch))
        return 1.0

    return factor


def load_module(checkpoint: Path | str) -> GradingModule:
    """A trained grader from a drgrade checkpoint, never executing code from the file."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise DrgradeError(f"{checkpoint}: checkpoint not found")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # Not torch's message: it advises weights_only=False, which would run the file's code.
        raise DrgradeError(
            f"{checkpoint}: refused: it holds Python objects besides tensors and plain values, "
            f"and loading those could run code from the file ({_refusal(error)}); use a "
            "checkpoint written by `drgrade train`"
        ) from None
    except Exception as error:  # torch raises many types for corrupt, truncated or alien files
        first_line = next(iter(str(error).splitlines()), "")
        raise DrgradeError(f"{checkpoint}: not a loadable checkpoint "
                           f"({type(error).__name__}: {first_line})") from None
    hparams = state.get("hyper_parameters") if isinstance(state, dict) else None
    if not isinstance(hparams, dict) or "config" not in hparams:
        raise DrgradeError(
            f"{checkpoint}: no drgrade metadata (config, preprocessing); a plain state_dict "
            "cannot say how to feed the model: use a checkpoint written by `drgrade train`"
        )
    _check_hparams(checkpoint, hparams, state.get("drgrade_version", "unknown"))
    module = GradingModule(hparams["config"], hparams["preprocessing"],
                           hparams.get("class_weights"), load_pretrained=False)
    try:
        module.load_state_dict(state.get("state_dict") or {})
    except RuntimeError as error:
        raise DrgradeError(
            f"{checkpoint}: its weights do not fit the {module.config.arch} "
            f"{module.config.head} model its config describes "
            f"({str(error).splitlines()[0]} ...); was it edited or written by another drgrade "
            "version?"
        ) from None
    return module


def _refusal(error: pickle.UnpicklingError) -> str:
    """The line of torch's weights-only refusal that names what was refused."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(error).splitlines()]
    reasons = [line for line in lines if line and not line.startswith(boilerplate)]
    return reasons[0] if reasons else "objects other than tensors"


def _check_hparams(checkpoint: Path, hparams: dict, written_by: str) -> None:
    """Raise naming what a checkpoint from another drgrade version has that this one lacks."""
    config, preprocessing = hparams["config"], hparams.get("preprocessing")
    problems = []
    if not isinstance(config, dict):
        problems.append("its config is not a mapping of options")
    elif unknown := sorted(set(config) - set(TrainConfig.__dataclass_fields__)):
        problems.append(f"options unknown to drgrade {__version__}: {', '.join(unknown)}")
    missing = [key for key in ("image_size", "mean", "std")
               if not isinstance(preprocessing, dict) or key not in preprocessing]
    if missing:
        problems.append(f"preprocessing lacks {', '.join(missing)}")
    if problems:
        raise DrgradeError(
            f"{checkpoint}: written by another drgrade version ({'; '.join(problems)}; it "
            f"records drgrade {written_by}): load it with the drgrade version that trained it"
        )
