"""`drgrade prepare`: real photographs in, a tight cached dataset out, resumable, nothing lost."""

import csv
import errno
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from drgrade import atomic
from drgrade.cli import main
from drgrade.data import prepare as prepare_module
from drgrade.data.manifest import Manifest, make_table
from drgrade.data.photographs import load_photograph
from drgrade.data.prepare import file_names, prepare_dataset
from drgrade.data.sources import read_prepared, read_source
from drgrade.data.synthetic import synthetic_fundus, write_synthetic_dataset
from drgrade.errors import DrgradeError


def idrid(shared_data: Path, count: int | None = None) -> Manifest:
    """The 20 full-size IDRiD photographs (or the first `count`) with their grades."""
    folder = shared_data / "idrid-train"
    manifest = read_source(folder / "fullres", "idrid", labels=folder / "train.csv")
    manifest = manifest.require_images(allow_missing=True)
    if count is not None:
        manifest.table = manifest.table.iloc[:count].reset_index(drop=True)
    return manifest


def csv_grades(shared_data: Path) -> dict[str, int]:
    """Grades straight from IDRiD's CSV, read independently of drgrade's reader."""
    with (shared_data / "idrid-train/train.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    return {row[0]: int(row[1]) for row in rows if row and row[0]}


def leftovers(out: Path) -> list[Path]:
    return sorted(out.rglob("*.partial"))


def test_idrid_photographs_become_tight_squares_with_their_grades(shared_data, tmp_path):
    out = tmp_path / "prepared"
    result = prepare_dataset(idrid(shared_data), out, size=128, workers=1)

    assert (result.written, result.skipped, result.rejected) == (20, 0, [])
    prepared = read_prepared(out, None, None)
    assert len(prepared.table) == 20 and not prepared.missing
    expected = csv_grades(shared_data)
    assert prepared.table["grade"].tolist() == [expected[i] for i in prepared.table["image_id"]]
    assert all(Path(p).name.startswith("IDRiD_") for p in prepared.table["source_path"])
    for path in prepared.table["path"]:
        image = Image.open(path)
        assert image.size == (128, 128) and image.mode == "RGB"
        brightest = np.asarray(image).max(axis=2).astype(int)
        # The disc spans the square from side to side: bright columns start at the edges.
        bright_columns = np.flatnonzero(brightest.max(axis=0) > 40)
        assert bright_columns[0] <= 2 and bright_columns[-1] >= 125, path
        # IDRiD's disc is clipped at top and bottom: that part is black padding.
        bright_rows = np.flatnonzero(brightest.max(axis=1) > 40)
        assert 5 <= bright_rows[0] <= 16 and 111 <= bright_rows[-1] <= 122, path
        assert brightest[0].max() <= 3 and brightest[60:68, 60:68].mean() > 60
    settings = json.loads((out / "prepare.json").read_text())
    assert settings["size"] == 128 and settings["enhance"] == "none"
    assert settings["image_format"] == "jpg" and settings["preprocess_version"] >= 1
    # The 393 listed photographs not in fullres/ are named in rejected.csv, none lost.
    rejected = pd.read_csv(out / "rejected.csv", keep_default_na=False)
    assert len(rejected) == 393
    assert not set(rejected["image_id"]) & set(prepared.table["image_id"])
    listed = r"missing \(listed at .*train\.csv:\d+\): image not found"
    assert rejected["reason"].str.match(listed).all()
    assert not leftovers(out)
    assert "written 20, skipped 0" in result.summary()
    assert "missing 393 listed image(s)" in result.summary()


def test_rerun_skips_what_is_done_and_refuses_other_settings(shared_data, tmp_path):
    manifest, out = idrid(shared_data, count=3), tmp_path / "prepared"
    first = prepare_dataset(manifest, out, size=64, workers=1)
    again = prepare_dataset(manifest, out, size=64, workers=1)
    assert (first.written, again.written, again.skipped) == (3, 0, 3)
    for changed in ({"size": 96}, {"enhance": "ben-graham"}, {"image_format": "png"}):
        with pytest.raises(DrgradeError, match="different settings.*another --out"):
            prepare_dataset(manifest, out, **{"size": 64, **changed}, workers=1)


def test_a_second_run_into_a_busy_folder_is_refused(shared_data, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    manifest, out = idrid(shared_data, count=1), tmp_path / "prepared"
    prepare_dataset(manifest, out, size=32, workers=1)
    with open(out / ".prepare.lock") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a run in another process would
        with pytest.raises(DrgradeError, match="another `drgrade prepare` is writing"):
            prepare_dataset(manifest, out, size=32, workers=1)


def test_interrupted_run_resumes_without_half_written_files(shared_data, tmp_path, monkeypatch):
    manifest, out = idrid(shared_data, count=6), tmp_path / "prepared"
    real_preprocess, calls = prepare_module.preprocess, []

    def interrupted_on_fourth(*args, **kwargs):
        calls.append(args)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_preprocess(*args, **kwargs)

    monkeypatch.setattr(prepare_module, "preprocess", interrupted_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(manifest, out, size=64, workers=1)
    assert len(list((out / "images").iterdir())) == 3 and not (out / "manifest.csv").exists()

    # Killed while renaming the fifth image into place: no partial file may remain.
    monkeypatch.setattr(prepare_module, "preprocess", real_preprocess)
    real_replace = prepare_module.os.replace

    def killed_on_rename(source, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module.os, "replace", killed_on_rename)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(manifest, out, size=64, workers=1)
    assert len(list((out / "images").iterdir())) == 3 and not leftovers(out)

    monkeypatch.setattr(prepare_module.os, "replace", real_replace)
    result = prepare_dataset(manifest, out, size=64, workers=1)
    assert (result.written, result.skipped) == (3, 3)
    assert len(read_prepared(out, None, None).table) == 6 and not leftovers(out)


def test_killed_process_resumes(shared_data, tmp_path):
    folder, out = shared_data / "idrid-train", tmp_path / "prepared"
    # A real kill -9 mid-run: slowed down so that it is still running when killed.
    child = f"""
import time
from drgrade.data import prepare
from drgrade.data.sources import read_source
real = prepare.preprocess
def slow(*args, **kwargs):
    time.sleep(0.1)
    return real(*args, **kwargs)
prepare.preprocess = slow
manifest = read_source({str(folder / "fullres")!r}, "idrid", labels={str(folder / "train.csv")!r})
prepare.prepare_dataset(manifest.require_images(True), {str(out)!r}, size=64, workers=1)
"""
    process = subprocess.Popen([sys.executable, "-c", child])
    deadline = time.monotonic() + 60
    while len(list(out.glob("images/*.jpg"))) < 3:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "the run wrote nothing in 60 s"
        time.sleep(0.02)
    process.kill()
    process.wait()
    done = len(list(out.glob("images/*.jpg")))
    assert 3 <= done < 20
    (out / "images/IDRiD_194.jpg.12345.partial").write_bytes(b"half an image")

    result = prepare_dataset(idrid(shared_data), out, size=64, workers=1)
    assert (result.skipped, result.written) == (done, 20 - done)
    assert not leftovers(out)
    for path in read_prepared(out, None, None).table["path"]:
        Image.open(path).load()  # every image complete


def test_odd_and_bad_files_prepared_or_rejected_with_reasons(shared_data, tmp_path):
    photograph = load_photograph(shared_data / "idrid-train/fullres/IDRiD_001.jpg", 256)
    files = tmp_path / "corpus"
    files.mkdir()
    jpeg = io.BytesIO()
    photograph.save(jpeg, "JPEG", quality=95)
    (files / "rgb.jpg").write_bytes(jpeg.getvalue())
    photograph.convert("CMYK").save(files / "cmyk.jpg", quality=95)
    grey = photograph.convert("L")
    grey.save(files / "grey.png")
    Image.fromarray(np.asarray(grey).astype(np.uint16) * 257).save(files / "grey16.png")
    # Transparent where the photograph is dark, and white there: only alpha can hide it.
    alpha = Image.fromarray(((np.asarray(photograph).max(axis=2) > 25) * 255).astype(np.uint8))
    rgba = Image.composite(photograph, Image.new("RGB", photograph.size, "white"), alpha)
    rgba.putalpha(alpha)
    rgba.save(files / "rgba.png")
    png = io.BytesIO()
    photograph.save(png, "PNG")
    damaged = bytearray(png.getvalue())
    start = damaged.find(b"IDAT") + 200
    damaged[start:start + 64] = bytes(64)
    (files / "corrupt.png").write_bytes(bytes(damaged))
    (files / "random.jpg").write_bytes(np.random.default_rng(0).bytes(4000))
    (files / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (files / "empty.jpg").write_bytes(b"")
    (files / "notes.jpg").write_text("grading notes, saved with the wrong name\n")
    Image.new("RGB", photograph.size).save(files / "black.png")
    photograph.resize((24, 16)).save(files / "tiny.png")
    good = ["rgb", "cmyk", "grey", "grey16", "rgba"]
    bad = {"corrupt": "corrupt image data", "random": "not an image",
           "truncated": "truncated image data", "empty": "empty file",
           "notes": "not an image", "black": "blank", "tiny": "too small"}
    rows = [{"image_id": p.stem, "path": str(p), "grade": 2, "patient": p.stem}
            for p in sorted(files.iterdir())]
    manifest = Manifest(make_table(rows), "folders", files)

    out = tmp_path / "prepared"
    result = prepare_dataset(manifest, out, size=96, workers=1, image_format="png")

    rejected = pd.read_csv(out / "rejected.csv")
    assert list(rejected.columns) == ["path", "image_id", "reason"]
    reasons = dict(zip(rejected["image_id"], rejected["reason"], strict=True))
    assert set(reasons) == set(bad)
    for name, reason in bad.items():
        assert reasons[name].startswith(reason), (name, reasons[name])
        assert f"{files / name}" in result.summary(limit=20)
    prepared = read_prepared(out, None, None).table
    assert sorted(prepared["image_id"]) == sorted(good)
    pixels = {i: np.asarray(Image.open(p)).astype(float)
              for i, p in zip(prepared["image_id"], prepared["path"], strict=True)}
    reference = pixels["rgb"]
    red, green, blue = reference[30:66, 30:66].reshape(-1, 3).mean(axis=0)
    assert red > green > blue and 80 < red < 250  # a fundus: orange-red, well exposed
    assert np.abs(pixels["cmyk"] - reference).mean() < 4
    assert np.abs(pixels["rgba"] - reference).mean() < 4
    luminance = reference @ [0.299, 0.587, 0.114]
    for name in ("grey", "grey16"):
        assert np.ptp(pixels[name], axis=2).max() == 0  # grey stays grey
        assert np.abs(pixels[name][..., 0] - luminance).mean() < 4, name


def test_every_image_rejected_is_an_error_that_points_to_the_list(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    manifest = Manifest(make_table([{"image_id": "a", "path": str(tmp_path / "a.jpg"),
                                     "grade": 0, "patient": "a"}]), "folders", tmp_path)
    with pytest.raises(DrgradeError, match="none of the 1 images.*rejected.csv"):
        prepare_dataset(manifest, tmp_path / "out", size=32, workers=1)
    assert "empty file" in (tmp_path / "out/rejected.csv").read_text()


def test_output_folder_must_be_new_empty_or_an_earlier_run(shared_data, tmp_path):
    manifest = idrid(shared_data, count=1)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DrgradeError, match="not empty"):
        prepare_dataset(manifest, tmp_path, size=32, workers=1)
    with pytest.raises(DrgradeError, match="is a file"):
        prepare_dataset(manifest, tmp_path / "notes.txt", size=32, workers=1)
    with pytest.raises(DrgradeError, match="--size"):
        prepare_dataset(manifest, tmp_path / "new", size=4, workers=1)


def test_medmnist_npz_images_are_prepared(shared_data, tmp_path):
    manifest = read_source(shared_data / "retinamnist/retinamnist.npz")
    manifest.table = manifest.table.groupby("split").head(3).reset_index(drop=True)
    result = prepare_dataset(manifest, tmp_path / "out", size=32, workers=1)
    assert result.written == 9
    prepared = read_prepared(tmp_path / "out", None, None).table
    assert prepared["grade"].tolist() == manifest.table["grade"].tolist()
    assert sorted(set(prepared["split"])) == ["test", "train", "val"]
    assert Image.open(prepared["path"][0]).size == (32, 32)


def test_file_names_are_safe_and_unique():
    ids = ["IDRiD_001", "10_left", "a b/c", "Photo", "photo", "CON", "é.jpg", "..", "x" * 150]
    names = file_names(ids)
    assert names[:2] == ["IDRiD_001", "10_left"]
    assert len({n.lower() for n in names}) == len(ids)
    for name in names[2:]:
        assert name != ids[names.index(name)] and len(name) <= 100
        assert all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
        assert not name.startswith(".")


CLI_ARGS = ["--format", "idrid", "--size", "64", "--allow-missing", "--workers", "2"]


def test_cli_prepare_end_to_end_and_rerun_skips_everything(shared_data, tmp_path, capsys):
    folder, out = shared_data / "idrid-train", tmp_path / "prepared"
    # A test share of 1/4 because the default 1/5 fails on 4 images a grade (see below).
    args = ["prepare", str(folder / "fullres"), "--labels", str(folder / "train.csv"),
            "--out", str(out), *CLI_ARGS, "--test-fraction", "0.25", "--val-fraction", "0"]
    assert main(args) == 0
    assert "written 20, skipped 0" in capsys.readouterr().out
    assert main(args) == 0
    assert "written 0, skipped 20" in capsys.readouterr().out
    assert len(read_prepared(out, None, None).table) == 20


def test_cli_prepare_with_default_split_fractions(shared_data, tmp_path):
    folder = shared_data / "idrid-train"
    assert main(["prepare", str(folder / "fullres"), "--labels", str(folder / "train.csv"),
                 "--out", str(tmp_path / "prepared"), *CLI_ARGS]) == 0
    table = read_prepared(tmp_path / "prepared", None, None).table
    assert set(table["split"]) == {"train", "val", "test"}


# --- nothing lost, no traceback: missing images, full disks, bad options, killed runs ---------


def synthetic_source(root: Path, n_images: int = 6, unlisted_missing: int = 0) -> Path:
    """A small EyePACS-layout source; `unlisted_missing` more rows name images not on disk."""
    write_synthetic_dataset(root, n_images, widths=(64, 96))
    with (root / "trainLabels.csv").open("a") as labels:
        labels.writelines(f"{9000 + i}_left,1\n" for i in range(unlisted_missing))
    return root


def test_allow_missing_lists_each_missing_image_with_its_row(tmp_path, capsys):
    source = synthetic_source(tmp_path / "raw", 6, unlisted_missing=2)
    args = ["prepare", str(source), "--out", str(tmp_path / "out"), "--size", "32",
            "--workers", "1", "--test-fraction", "0", "--val-fraction", "0"]
    assert main(args) == 2
    assert "2 of 8 listed images are missing" in capsys.readouterr().err
    assert main([*args, "--allow-missing"]) == 0
    assert "missing 2 listed image(s) not on disk" in capsys.readouterr().out
    rejected = pd.read_csv(tmp_path / "out/rejected.csv", keep_default_na=False)
    assert rejected["image_id"].tolist() == ["9000_left", "9001_left"]
    for line, reason in zip((8, 9), rejected["reason"], strict=True):
        assert reason == (f"missing (listed at {source / 'trainLabels.csv'}:{line}): "
                          f"image not found in {source / 'train'}")
    assert len(read_prepared(tmp_path / "out", None, None).table) == 6


def fail_fsync_on_call(monkeypatch, n: int) -> None:
    """The n-th fsync (drgrade.atomic's step before the rename) fails as on a full disk."""
    real, calls = atomic.os.fsync, []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == n:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)


def test_full_disk_while_writing_an_image_is_a_clear_error(tmp_path, monkeypatch, capsys):
    source, out = synthetic_source(tmp_path / "raw", 3), tmp_path / "out"
    fail_fsync_on_call(monkeypatch, 2)  # 1: prepare.json, 2: the first image
    assert main(["prepare", str(source), "--out", str(out), "--size", "32", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {out / 'images'}/")
    assert "No space left on device (" in err and "MB free in" in err and "Traceback" not in err
    assert not leftovers(out) and not (out / "manifest.csv").exists()


def test_full_disk_while_writing_rejected_csv_leaves_no_partial(tmp_path, monkeypatch):
    manifest, out = read_source(synthetic_source(tmp_path / "raw", 3)), tmp_path / "out"
    fail_fsync_on_call(monkeypatch, 5)  # prepare.json, 3 images, then rejected.csv
    with pytest.raises(DrgradeError, match=r"cannot write .*rejected.csv: No space left"):
        prepare_dataset(manifest, out, size=32, workers=1)
    assert not leftovers(out) and not (out / "rejected.csv").exists()
    monkeypatch.undo()
    result = prepare_dataset(manifest, out, size=32, workers=1)
    assert (result.skipped, result.written) == (3, 0) and not leftovers(out)


def test_unwritable_output_folder_is_a_clear_error(tmp_path, capsys):
    source = synthetic_source(tmp_path / "raw", 2)
    (tmp_path / "notes.txt").write_text("mine")
    out = tmp_path / "notes.txt" / "prepared"
    assert main(["prepare", str(source), "--out", str(out), "--size", "32", "--workers", "1"]) == 2
    assert capsys.readouterr().err == f"error: cannot write {out}: Not a directory\n"


@pytest.mark.parametrize("workers", ["0", "-1"])
def test_workers_below_one_are_refused_before_reading(tmp_path, capsys, workers):
    assert main(["prepare", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"),
                 "--workers", workers]) == 2
    assert capsys.readouterr().err == f"error: --workers must be at least 1, got {workers}\n"
    with pytest.raises(DrgradeError, match="--workers must be at least 1"):
        prepare_dataset(read_source(synthetic_source(tmp_path / "raw", 1)), tmp_path / "out",
                        size=32, workers=int(workers))


def _process_state(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process from /proc, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def _children(pid: int) -> set[int]:
    """Live (not zombie) child processes of `pid`."""
    states = {int(p.name): _process_state(int(p.name)) for p in Path("/proc").glob("[0-9]*")}
    return {child for child, state in states.items() if state and state[1] == pid
            and state[0] != "Z"}


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads processes from /proc")
def test_kill_9_of_prepare_leaves_no_worker_behind(tmp_path):
    raw = tmp_path / "raw"
    (raw / "train").mkdir(parents=True)
    first = raw / "train" / "1_left.jpeg"
    synthetic_fundus(2, np.random.default_rng(0), (700, 600)).save(first, quality=90)
    names = [f"{patient}_{eye}" for patient in range(1, 301) for eye in ("left", "right")]
    for name in names[1:]:
        os.link(first, raw / "train" / f"{name}.jpeg")
    (raw / "trainLabels.csv").write_text(
        "image,level\n" + "".join(f"{name},{i % 5}\n" for i, name in enumerate(names)))
    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "drgrade", "prepare", str(raw), "--out",
                            str(out), "--size", "32", "--workers", "2"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any(out.glob("images/*.jpg")) or len(_children(run.pid)) < 2:
        assert run.poll() is None, "prepare ended before it could be killed"
        assert time.monotonic() < deadline, "prepare started no workers in 60 s"
        time.sleep(0.02)
    children = _children(run.pid)  # the two workers and multiprocessing's resource tracker
    run.kill()
    run.wait()
    assert not (out / "manifest.csv").exists()  # killed mid-run
    deadline = time.monotonic() + 10
    while (alive := {c for c in children if (_process_state(c) or ("Z",))[0] != "Z"}) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive, f"processes {alive} outlived their killed parent"
