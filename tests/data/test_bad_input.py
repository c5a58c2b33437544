"""Bad input is a one-line DrgradeError naming the file, line and reason, at read time."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from drgrade.cli import main
from drgrade.data.inspect import describe
from drgrade.data.prepare import prepare_dataset
from drgrade.data.sources import read_source
from drgrade.data.synthetic import write_synthetic_dataset
from drgrade.errors import DrgradeError

GOOD = "image,level\n1_left,0\n1_right,2\n"


def read_error(source: Path, layout: str = "auto") -> str:
    with pytest.raises(DrgradeError) as caught:
        read_source(source, layout)
    return str(caught.value)


# --- label files that are not UTF-8 CSV text ------------------------------------------------


@pytest.mark.parametrize("content, expected", [
    ((GOOD + "José_left,1\n").encode("latin-1"), r"trainLabels.csv:4: byte 0xe9 is not UTF-8"),
    (GOOD.encode("utf-16"), r"trainLabels.csv:1: the file is UTF-16 text; save it as UTF-8"),
    (GOOD.encode("utf-16-le"), r"trainLabels.csv:1: a NUL byte: not a text file"),
    (np.random.default_rng(0).bytes(3000), r"trainLabels.csv:\d+: byte 0x[0-9a-f]{2} is not UTF-8"),
    (("image,level\n1_left," + "9" * 140_000 + "\n").encode(),
     r"trainLabels.csv:2: not a readable CSV row \(field larger than field limit"),
])
def test_undecodable_label_file_names_file_line_and_fix(tmp_path, capsys, content, expected):
    (tmp_path / "trainLabels.csv").write_bytes(content)
    with pytest.raises(DrgradeError, match=expected):
        read_source(tmp_path, "eyepacs")
    assert main(["inspect", str(tmp_path), "--format", "eyepacs"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1


def test_other_text_label_files_are_checked_alike(tmp_path):
    lab = tmp_path / "lab"
    lab.mkdir()
    for split in ("train", "test"):
        (lab / f"{split}_img.csv").write_text("1_left\n")
        (lab / f"{split}_label.csv").write_text("0\n")
    (lab / "test_img.csv").write_bytes("1_left\n2_rïght\n".encode("latin-1"))
    assert "test_img.csv:2: byte 0xef is not UTF-8" in read_error(lab, "lab")
    idrid = tmp_path / "idrid"
    idrid.mkdir()
    (idrid / "labels.csv").write_bytes(b"Image name,Retinopathy grade,Risk of macular edema \n"
                                       b"IDRiD_\xff01,2,0\n")
    assert "labels.csv:2: byte 0xff is not UTF-8" in read_error(idrid)  # auto-detected


@pytest.mark.parametrize("text", [
    "image,level\n", "image,level\n\n,\n",
])
def test_header_only_label_file(tmp_path, capsys, text):
    (tmp_path / "trainLabels.csv").write_text(text)
    assert main(["inspect", str(tmp_path)]) == 2
    assert f"{tmp_path}: trainLabels.csv has no graded image rows (only a header" \
        in capsys.readouterr().err


# --- MedMNIST npz ---------------------------------------------------------------------------


def write_npz(path: Path, **changes) -> Path:
    """A small MedMNIST-like npz (4 images a split), with some arrays replaced."""
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = np.full((4, 8, 8, 3), 90, np.uint8)
        arrays[f"{split}_labels"] = np.arange(4).reshape(4, 1)
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_a_good_npz_reads(tmp_path):
    manifest = read_source(write_npz(tmp_path / "ok.npz"))
    assert len(manifest.table) == 12 and manifest.table["grade"].tolist()[:4] == [0, 1, 2, 3]


def test_truncated_or_random_npz(tmp_path):
    whole = write_npz(tmp_path / "whole.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(whole[: len(whole) // 2])
    assert "cut.npz: not a readable npz file" in read_error(tmp_path / "cut.npz")
    assert "download it again" in read_error(tmp_path / "cut.npz")
    (tmp_path / "noise.npz").write_bytes(np.random.default_rng(1).bytes(5000))
    assert "noise.npz: not a readable npz file" in read_error(tmp_path / "noise.npz")


@pytest.mark.parametrize("changes, expected", [
    ({"val_labels": np.zeros((3, 1))},
     "4 images need one label each, shaped (4,) or (4, 1); found (3, 1) (value: 'val_labels')"),
    ({"test_labels": np.zeros((4, 2))}, "found (4, 2) (value: 'test_labels')"),
    ({"train_labels": np.array([0, "x", None, 1], dtype=object)},
     "labels must be numbers; found dtype object (Python objects: drgrade never unpickles)"),
    ({"train_images": np.empty(4, dtype=object)}, "images must be uint8, shaped (N, H, W) or "
                                                  "(N, H, W, 3); found object (4,)"),
    ({"val_images": np.zeros((4, 8, 8, 3), np.float32)}, "found float32 (4, 8, 8, 3)"),
    ({"test_images": None}, "no such array (found: train_images"),
])
def test_npz_with_unusable_arrays_fails_at_read_time(tmp_path, changes, expected):
    message = read_error(write_npz(tmp_path / "bad.npz", **changes))
    assert "bad.npz: not a usable MedMNIST npz: 1 problem(s)" in message
    assert expected in message


# --- a prepared folder ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A prepared folder of 6 synthetic photographs."""
    root = tmp_path_factory.mktemp("bad-input")
    raw = write_synthetic_dataset(root / "raw", 6, widths=(64, 96))
    prepare_dataset(read_source(raw), root / "prepared", size=32, workers=1)
    return root / "prepared"


def copy_with_manifest(prepared: Path, tmp_path: Path, line: int, column: str, value: str) -> Path:
    """A copy of the prepared folder whose manifest.csv holds `value` at `line`, `column`."""
    copy = shutil.copytree(prepared, tmp_path / "copy")
    lines = (copy / "manifest.csv").read_text().splitlines()
    header, row = lines[0].split(","), lines[line - 1].split(",")
    row[header.index(column)] = value
    lines[line - 1] = ",".join(row)
    (copy / "manifest.csv").write_text("\n".join(lines) + "\n")
    return copy


@pytest.mark.parametrize("grade, reason", [
    ("x", "grade is not a number (value: 'x')"), ("9", "grade outside 0-4 (value: '9')"),
])
def test_prepared_manifest_with_a_bad_grade_names_its_line(prepared, tmp_path, capsys,
                                                           grade, reason):
    copy = copy_with_manifest(prepared, tmp_path, 4, "grade", grade)
    assert f"manifest.csv:4: {reason}" in read_error(copy)
    assert main(["inspect", str(copy)]) == 2
    assert f"manifest.csv:4: {reason}" in capsys.readouterr().err


def test_prepared_manifest_with_an_unknown_split(prepared, tmp_path):
    copy = copy_with_manifest(prepared, tmp_path, 2, "split", "trian")
    assert "manifest.csv:2: split must be one of train, val, test or empty (value: 'trian')" \
        in read_error(copy)


def test_inspect_reports_a_deleted_prepared_image(prepared, tmp_path, capsys):
    copy = shutil.copytree(prepared, tmp_path / "copy")
    manifest = read_source(copy)
    gone = manifest.table.iloc[2]
    Path(gone["path"]).unlink()
    assert main(["inspect", str(copy)]) == 0
    summary = capsys.readouterr().out
    assert "found on disk: 5 of 6" in summary and "problems: none" not in summary
    assert f"missing: {copy / 'manifest.csv'}:4: image not found" in summary
    assert f"(value: '{gone['image_id']}')" in summary
    assert describe(read_source(copy)) in summary
    with pytest.raises(DrgradeError, match=r"1 of 6 listed images are missing"):
        read_source(copy).require_images()
