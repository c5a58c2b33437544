"""How Lightning writes and reads drgrade's checkpoints: atomically, in the run's own folder,
and never running code from a file.

Lightning's own writer saves to a temporary file in $TMPDIR and moves it into place; across
filesystems that move is a copy, so a kill or a full disk could leave a truncated
`last.ckpt` under its real name. Here the temporary file sits beside the target, is
flushed to disk and renamed over it; the `last.ckpt` it replaces is kept as
`last.previous.ckpt`, so a resume always has a complete state to start from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from drgrade.atomic import PARTIAL_SUFFIX, atomic_write, write_error
from drgrade.checkpoint import read_checkpoint
from drgrade.errors import DrgradeError
from drgrade.run_folder import (
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
    last_checkpoint,
    previous_checkpoint,
)


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file in the target's folder, fsync, rename; weights-only
    loading (immune to TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "wb") as handle:
            torch.save(checkpoint, handle)
            if path.name == LAST_CHECKPOINT and path.is_file():
                # Keep the state being replaced: written in full, renamed, never copied.
                try:
                    os.replace(path, previous_checkpoint(path.parent.parent))
                except OSError as error:
                    raise write_error(path, error) from None

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return read_checkpoint(path)


def remove_partial_saves(run: Path) -> None:
    """Delete the temporary files of saves a kill interrupted (up to a full state each)."""
    for partial in (Path(run) / CHECKPOINT_DIR).glob(f".*{PARTIAL_SUFFIX}"):
        partial.unlink(missing_ok=True)


def resumable_checkpoint(run: Path, say=print) -> Path:
    """The newest complete training state of a run: last.ckpt, else last.previous.ckpt."""
    problems = []
    for candidate in (last_checkpoint(run), previous_checkpoint(run)):
        if not candidate.is_file():
            continue
        try:
            read_checkpoint(candidate)
        except DrgradeError as error:
            problems.append(str(error))
            continue
        if problems:
            say(f"warning: {problems[0]}; resuming from the state saved before it, {candidate}")
        return candidate
    if not problems:
        raise DrgradeError(f"--resume: {last_checkpoint(run)} does not exist; nothing to "
                           f"resume in {run}")
    raise DrgradeError(
        f"--resume: no readable training state in {run / 'checkpoints'} ({'; '.join(problems)}). "
        f"The best weights so far are in best.ckpt: start a new run from them with "
        f"`drgrade train ... --out NEW_FOLDER`, or delete {run} to start over"
    )
