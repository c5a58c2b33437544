"""Stop a run whose loss has gone non-finite or exploded, saying what to change.

A diverged run otherwise trains on silently for all its epochs (a regression run at lr 0.01
reached a validation loss of 8.6e14 after its first epoch and went on for 25). The check
runs before the checkpointers save (Lightning calls them last), so the checkpoints on disk
stay those of the last sane epoch.
"""

from __future__ import annotations

import math

import lightning as L
from lightning.pytorch.callbacks import Callback

from drgrade.errors import DrgradeError

# A loss this many times the first batches' is not learning. Generous on purpose: an
# untrained ResNet-50's early batches can spike ~100x and recover, and batch-norm statistics
# of an early epoch put a healthy run's validation loss at ~50x (the demo's first epoch:
# 74.9 against 1.6); a diverged run goes far past (8.6e14) or to NaN.
EXPLOSION_FACTOR = {"training loss": 1e3, "validation loss": 1e4}
CHECK_EVERY = 20  # batches between checks of the training loss (each check syncs a GPU)
START_BATCHES = 5  # batches whose mean loss sets the scale


class DivergenceGuard(Callback):
    """Raises a DrgradeError naming the fix when the loss is NaN/inf or explodes."""

    def __init__(self, lr: float, gradient_clip_val: float | None):
        self.lr, self.gradient_clip_val = lr, gradient_clip_val
        self.start: list[float] = []

    def state_dict(self) -> dict:
        return {"start": self.start}

    def load_state_dict(self, state: dict) -> None:
        self.start = list(state.get("start", []))

    @property
    def scale(self) -> float | None:
        return sum(self.start) / len(self.start) if self.start else None

    def on_train_batch_end(self, trainer: L.Trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if len(self.start) >= START_BATCHES and step % CHECK_EVERY:
            return
        loss = float(outputs["loss"].detach())
        if len(self.start) < START_BATCHES and math.isfinite(loss):
            self.start.append(loss)
        self._check("training loss", loss, trainer.current_epoch)

    def on_validation_end(self, trainer: L.Trainer, module) -> None:
        if trainer.sanity_checking or "val_loss" not in trainer.callback_metrics:
            return
        self._check("validation loss", float(trainer.callback_metrics["val_loss"]),
                    trainer.current_epoch)

    def _check(self, what: str, loss: float, epoch: int) -> None:
        scale = self.scale if len(self.start) >= START_BATCHES else None  # not yet known
        exploded = scale is not None and loss > EXPLOSION_FACTOR[what] * max(scale, 1e-3)
        if math.isfinite(loss) and not exploded:
            return
        start = f" against {scale:.3g} at the start" if scale is not None else ""
        clip = ("lower --gradient-clip-val" if self.gradient_clip_val
                else "clip gradients with --gradient-clip-val 1.0")
        raise DrgradeError(
            f"training diverged in epoch {epoch}: {what} {loss:.3g}{start}. Lower --lr (now "
            f"{self.lr:g}, e.g. to {self.lr / 10:g}) or {clip}; the checkpoints of the last "
            "sane epoch are kept (continue with --resume after changing the option)"
        )
