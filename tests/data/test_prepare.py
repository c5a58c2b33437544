"""`drgrade prepare`: real photographs in, a tight cached dataset out, resumable, nothing lost."""

import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from drgrade.cli import main
from drgrade.data import prepare as prepare_module
from drgrade.data.fundus import load_photograph
from drgrade.data.manifest import Manifest, make_table
from drgrade.data.prepare import file_names, prepare_dataset
from drgrade.data.sources import read_prepared, read_source
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
    assert (out / "rejected.csv").read_text().strip() == "path,image_id,reason"
    assert not leftovers(out)
    assert "written 20, skipped 0" in result.summary()


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
