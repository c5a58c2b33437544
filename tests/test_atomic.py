"""Files appear complete under their final name or not at all; write failures are one
clear error naming the file."""

import errno
import os

import pytest

from drgrade.atomic import atomic_write, make_folder, write_text
from drgrade.errors import DrgradeError


def test_a_file_appears_only_when_complete(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_write(target) as handle:
        handle.write("half")
        assert not target.exists()  # still under the temporary name
    assert target.read_text() == "half"


def test_a_failed_write_leaves_the_old_file_and_no_partial(tmp_path):
    target = tmp_path / "out.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write("new")
        raise RuntimeError("killed half-way")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_full_disk_names_the_file_and_the_free_space(tmp_path, monkeypatch):
    def no_space(_):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(DrgradeError, match=r"cannot write .*out\.txt: No space left on device "
                                           r"\(\d+ MB free in "):
        write_text(tmp_path / "out.txt", "x")
    assert not list(tmp_path.iterdir())


def test_a_folder_is_not_a_file_name(tmp_path):
    with pytest.raises(DrgradeError, match="it is a folder; give a file name"):
        write_text(tmp_path, "x")


def test_a_folder_that_cannot_be_made(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(DrgradeError, match="cannot create the folder .*file/sub"):
        make_folder(tmp_path / "file" / "sub")
