"""An unfinished `drgrade predict` run, kept so that running it again continues it.

Rows go to OUT.part as they come; after each batch the file is flushed to disk and
OUT.part.json records how many photographs are done, how long the file was then, and the
summary so far. A rerun with the same model, options and photographs cuts OUT.part back to
that length (a kill may have left half a row after it) and goes on from there; anything else
starts over. Only a finished run renames OUT.part to OUT.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from drgrade.atomic import RESUME_SUFFIX, write_error, write_text
from drgrade.inference.grader import GraderBase

STATE_SUFFIX = ".json"
SAVE_EVERY_S = 2.0  # how often the state is saved: a rerun redoes at most this much work


def run_key(grader: GraderBase, images: list[Path], settings: dict) -> str:
    """What must match for a rerun to continue: the model, the settings, the photographs.

    The model is known by its card and by its outputs on one fixed input, so a retrained
    model with the same card does not continue another one's rows.
    """
    size = grader.card.image_size
    probe = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    outputs = np.round(grader.probabilities(probe), 4).tolist()
    key = json.dumps([grader.card.to_json(), outputs, settings, [str(p) for p in images]])
    return hashlib.sha256(key.encode()).hexdigest()


class ResumablePredictions:
    """OUT.part and its state file: where a predict run left off."""

    def __init__(self, out: Path, key: str):
        self.out = out
        self.part = out.with_name(out.name + RESUME_SUFFIX)
        self.state_file = self.part.with_name(self.part.name + STATE_SUFFIX)
        self.key = key
        self.note = ""  # what happened to an earlier unfinished run, for the summary
        self.saved_at = -math.inf

    def start(self) -> tuple[int, dict]:
        """Photographs already done and the summary saved with them; (0, {}) to start."""
        if not self.part.exists():
            return 0, {}
        try:
            state = json.loads(self.state_file.read_text())
            done, length, summary = state["done"], state["bytes"], state["summary"]
            same = state["key"] == self.key and self.part.stat().st_size >= length
        except (OSError, ValueError, KeyError, TypeError):
            same = False
        if not same:
            self.note = (f"an unfinished {self.part} that this run cannot continue (another "
                         "model, options or set of photographs) was started over")
            self.part.unlink(missing_ok=True)
            return 0, {}
        os.truncate(self.part, length)  # rows written after the last saved state go
        self.note = f"resumed {self.part}: {done:,} photograph(s) were graded before"
        return done, summary

    def rows(self) -> list[dict]:
        """The rows written so far (after `start`), by column name."""
        with self.part.open(newline="") as handle:
            return list(csv.DictReader(handle))

    def save(self, handle, done: int, summary: Callable[[], dict]) -> None:
        """Rows so far on disk, then the state that points at them (and `summary()`), at most
        every SAVE_EVERY_S: two fsyncs a batch would slow a fast GPU run."""
        now = time.monotonic()
        if now - self.saved_at < SAVE_EVERY_S:
            return
        self.saved_at = now
        try:
            handle.flush()
            os.fsync(handle.fileno())
            length = os.fstat(handle.fileno()).st_size
            write_text(self.state_file, json.dumps(
                {"key": self.key, "done": done, "bytes": length, "summary": summary()}))
        except OSError as error:
            raise self.kept(write_error(self.part, error)) from None

    def finish(self) -> None:
        """The finished rows under their final name."""
        try:
            os.replace(self.part, self.out)
        except OSError as error:
            raise self.kept(write_error(self.out, error)) from None
        self.state_file.unlink(missing_ok=True)

    def kept(self, error: Exception) -> Exception:
        """`error`, saying that the rows so far wait in OUT.part for a rerun."""
        return type(error)(f"{error}; the rows so far are kept in {self.part}: run the same "
                           "command again to continue")
