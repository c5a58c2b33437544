"""Files that appear under their final name complete, or not at all.

Everything drgrade writes for a user (manifests, predictions, checkpoints, ONNX models)
goes through `atomic_write`: a temporary file in the target's own folder (so the final step
is a rename, never a cross-filesystem copy), flushed to disk, then `os.replace`d over the
target. A kill or a full disk leaves the previous file, or none, never half a one. Downloads
keep their unfinished bytes under a name of their own instead, to resume (data/download.py).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from drgrade.errors import DrgradeError

PARTIAL_SUFFIX = ".partial"
# NAME.part: the unfinished, resumable output of a download or a predict run.
RESUME_SUFFIX = ".part"


def partial_path(target: Path) -> Path:
    """The temporary name `target` is written under (hidden, unique to this process)."""
    return target.with_name(f".{target.name}.{os.getpid()}{PARTIAL_SUFFIX}")


def write_error(target: Path, error: OSError) -> DrgradeError:
    """A user's message for a file that could not be written: what, where, why."""
    reason = error.strerror or str(error)
    if error.errno == errno.ENOSPC:
        try:
            free = shutil.disk_usage(target.parent).free / 1e6
            reason += f" ({free:.0f} MB free in {target.parent})"
        except OSError:
            pass
    return DrgradeError(f"cannot write {target}: {reason}")


def make_folder(folder: Path | str) -> Path:
    """`folder` and its parents, created if missing; a DrgradeError if that is impossible."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DrgradeError(f"cannot create the folder {folder}: "
                           f"{error.strerror or error}") from None
    return folder


def refuse_folder(target: Path) -> Path:
    """`target`, unless a folder is there: an error saying a file name is wanted."""
    if target.is_dir():
        raise DrgradeError(f"cannot write {target}: it is a folder; give a file name")
    return target


@contextmanager
def atomic_write(target: Path | str, mode: str = "w", **open_options) -> Iterator[IO]:
    """Open a temporary file for writing that becomes `target` when the block ends cleanly.

    The folder must exist. An OSError (full disk, no permission) is raised as a
    DrgradeError naming the file; on any error the temporary file is removed.
    """
    target = refuse_folder(Path(target))
    partial = partial_path(target)
    try:
        with open(partial, mode, **open_options) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise write_error(target, error) from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_text(target: Path | str, text: str) -> None:
    """Write `text` (UTF-8) to `target` atomically."""
    with atomic_write(target, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_bytes(target: Path | str, data: bytes) -> None:
    """Write `data` to `target` atomically."""
    with atomic_write(target, "wb") as handle:
        handle.write(data)
