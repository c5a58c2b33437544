"""Readers: the real label files as they ship, and every layout built small in tmp_path."""

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drgrade.data.manifest import (
    COLUMNS,
    assign_splits,
    patients_in_several_splits,
    split_counts,
)
from drgrade.data.photographs import load_photograph
from drgrade.data.sources import detect_layout, read_source
from drgrade.errors import DrgradeError


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (120, 40, 20)).save(path)
    return path


# --- real data -----------------------------------------------------------------------------


def test_lab_split_reads_every_line_and_warns_about_patients(shared_data):
    manifest = read_source(shared_data / "eyepacs-labels/lab3-split", "lab")
    counts = split_counts(manifest.table)
    assert counts.sum(axis=1).to_dict() == {"train": 28_100, "test": 7_026}
    # The first line of each file is a real row (the lab's loader lost it).
    first_train = manifest.table.iloc[0]
    assert (first_train["image_id"], first_train["grade"]) == ("2576_right", 0)
    assert (first_train["patient"], first_train["eye"]) == ("2576", "right")
    assert manifest.n_found == 0
    assert len(manifest.missing) == 35_126
    assert patients_in_several_splits(manifest.table) == 5_618
    assert any("5618 patients" in w for w in manifest.warnings)
    test = manifest.table[manifest.table["split"] == "test"]
    assert (test["grade"] == 0).mean() == pytest.approx(0.7335, abs=1e-3)


def test_eyepacs_label_file(shared_data):
    manifest = read_source(shared_data / "eyepacs-labels")
    assert manifest.layout == "eyepacs"
    assert len(manifest.table) == 35_126
    assert list(manifest.table.columns[:6]) == COLUMNS
    assert (manifest.table["split"] == "").all()
    assert set(manifest.table["eye"]) == {"left", "right"}
    assert manifest.table["grade"].value_counts().sort_index().tolist() == [
        25810, 2443, 5292, 873, 708,
    ]


def test_idrid_csv_as_shipped(shared_data):
    root = shared_data / "idrid-train"
    manifest = read_source(root)
    assert manifest.layout == "idrid"
    assert len(manifest.table) == 413 and manifest.n_found == 413
    assert manifest.table["grade"].value_counts().sort_index().tolist() == [134, 20, 136, 74, 49]
    assert "macular_edema_risk" in manifest.table
    with open(root / "train.csv", newline="") as handle:
        rows = {r[0]: int(r[1]) for r in list(csv.reader(handle))[1:] if r and r[0]}
    assert dict(zip(manifest.table["image_id"], manifest.table["grade"], strict=True)) == rows


def test_idrid_subset_reports_missing_and_can_go_on(shared_data):
    root = shared_data / "idrid-train"
    manifest = read_source(root / "fullres", "idrid", labels=root / "train.csv")
    assert manifest.n_found == 20 and len(manifest.missing) == 393
    with pytest.raises(DrgradeError, match="393 of 413 listed images are missing"):
        manifest.require_images()
    subset = manifest.require_images(allow_missing=True)
    assert len(subset.table) == 20 and subset.missing == []


def test_retinamnist_npz_official_split(shared_data):
    npz = shared_data / "retinamnist/retinamnist.npz"
    manifest = read_source(npz)
    assert manifest.layout == "medmnist"
    assert split_counts(manifest.table).sum(axis=1).to_dict() == {
        "train": 1080, "val": 120, "test": 400,
    }
    image = np.asarray(load_photograph(manifest.table.iloc[0]["path"], 28))
    assert image.shape == (28, 28, 3) and image.dtype == np.uint8


# --- every layout, small ------------------------------------------------------------------


def test_aptos_layout(tmp_path):
    (tmp_path / "train.csv").write_text("id_code,diagnosis\nabc,2\ndef,0\n")
    _image(tmp_path / "train_images/abc.png")
    _image(tmp_path / "train_images/def.png")
    manifest = read_source(tmp_path)
    assert manifest.layout == "aptos"
    assert manifest.table["grade"].tolist() == [2, 0]
    assert manifest.n_found == 2 and not manifest.warnings
    # As Kaggle ships it: test.csv names test_images/ without grades.
    (tmp_path / "test.csv").write_text("id_code\nghi\n")
    _image(tmp_path / "test_images/ghi.png")
    manifest = read_source(tmp_path)
    assert manifest.table["image_id"].tolist() == ["abc", "def"]
    assert manifest.warnings == [f"1 image(s) in {tmp_path / 'test_images'} left out: Kaggle "
                                 "never published their grades (grade them with `drgrade "
                                 "predict`)"]


def _ddr(root: Path, listed: dict[str, str]) -> Path:
    """DDR-dataset/DR_grading with the given {split file: lines} and an image per line."""
    grading = root / "DDR-dataset" / "DR_grading"
    for theirs, text in listed.items():
        grading.mkdir(parents=True, exist_ok=True)
        (grading / f"{theirs}.txt").write_text(text)
        for line in text.splitlines():
            if len(line.split()) == 2:
                _image(grading / theirs / line.split()[0])
    return grading.parent


def test_ddr_layout_with_its_ungradable_grade(tmp_path):
    source = _ddr(tmp_path, {"train": "007-0004-000.jpg 0\n20170323093305605.jpg 2\n"
                                      "20170413102628830.jpg 5\n",
                             "valid": "007-0007-000.jpg 4\n\n",
                             "test": "20170417152415441.jpg 1\n007-0025-000.jpg 5\n"})
    manifest = read_source(source)
    assert manifest.layout == "ddr"
    table = manifest.table.set_index("image_id")
    assert table["grade"].to_dict() == {"007-0004-000": 0, "20170323093305605": 2,
                                        "007-0007-000": 4, "20170417152415441": 1}
    assert table.loc["007-0007-000", "split"] == "val"
    assert manifest.n_found == 4
    # The grade-5 images are counted, not silently lost; their files are not "unlisted".
    assert manifest.warnings == ["left out as ungradable (DDR grade 5): 1 train, 1 test"]


def test_ddr_bad_lines_name_file_and_line(tmp_path):
    source = _ddr(tmp_path, {"train": "a.jpg 0\nb.jpg\nc.jpg 7\n", "valid": "", "test": ""})
    with pytest.raises(DrgradeError) as caught:
        read_source(source / "DR_grading", "ddr")
    message = str(caught.value)
    assert "train.txt:2: expected '<image> <grade>'" in message
    assert "train.txt:3: grade outside 0-4 (value: '7')" in message


def test_messidor2_adjudicated_grades(tmp_path):
    (tmp_path / "messidor_data.csv").write_text(
        "image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable\n"
        "20051020_43808_0100_PP.png,0,0,1\n"
        "IM002385.jpg,3,1,1\n"
        "IM004176.jpg,,,0\n")
    _image(tmp_path / "IMAGES/20051020_43808_0100_PP.png")
    _image(tmp_path / "IMAGES/IM002385.JPG")  # the file's extension is upper case
    _image(tmp_path / "IMAGES/IM004176.JPG")
    manifest = read_source(tmp_path)
    assert manifest.layout == "messidor2"
    table = manifest.table.set_index("image_id")
    assert table["grade"].to_dict() == {"20051020_43808_0100_PP": 0, "IM002385": 3}
    assert table.loc["IM002385", "macular_edema"] == "1"
    assert manifest.n_found == 2
    assert manifest.warnings[0] == "left out as ungradable (adjudicated_gradable 0): 1"
    assert f"no messidor-2.csv (ADCIS's list of examinations) in {tmp_path}" in \
        manifest.warnings[1] and len(manifest.warnings) == 2


def _messidor2(root, grades: dict[str, int], exams: str):
    """Messidor-2 as ADCIS and Kaggle ship it: IMAGES/, messidor_data.csv, messidor-2.csv."""
    (root / "messidor_data.csv").write_text(
        "image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable\n"
        + "".join(f"{name},{grade},0,1\n" for name, grade in grades.items()))
    for name in grades:
        _image(root / "IMAGES" / name)
    (root / "messidor-2.csv").write_text(exams)
    return root


def test_messidor2_examinations_pair_the_eyes_and_keep_them_in_one_split(tmp_path):
    names = [f"IM{k:06d}.jpg" for k in range(12)]
    exams = "left ; right\n" + "".join(f"{names[k]} ; {names[k + 1]}\n" for k in range(0, 10, 2))
    source = _messidor2(tmp_path, {name: k % 5 for k, name in enumerate(names)}, exams)
    manifest = read_source(source)
    table = manifest.table.set_index("image_id")
    assert table.loc["IM000000", ["patient", "eye"]].tolist() == ["IM000000", "left"]
    assert table.loc["IM000001", ["patient", "eye"]].tolist() == ["IM000000", "right"]
    # The last two are in no examination: each its own patient, and said so.
    assert table.loc["IM000011", ["patient", "eye"]].tolist() == ["IM000011", ""]
    assert manifest.warnings == [
        "graded images that messidor-2.csv does not list, each its own patient: 2"]
    splits = assign_splits(manifest.table, val_fraction=0.3, test_fraction=0.3, seed=0)
    assert patients_in_several_splits(splits) == 0
    assert set(splits["split"]) == {"train", "val", "test"}


@pytest.mark.parametrize("exams, reason", [
    ("left;right\nIM000000.jpg;\n", "messidor-2.csv:2: no right image named"),
    ("left;right\nIM000000.jpg;IM000001.jpg\nIM000001.jpg;IM000002.jpg\n",
     "messidor-2.csv:3: IM000001.jpg is listed again (first at line 2)"),
    ("image;other\n", "messidor-2.csv:1: missing column(s) left, right"),
])
def test_messidor2_bad_examination_lists_name_file_and_line(tmp_path, exams, reason):
    source = _messidor2(tmp_path, {"IM000000.jpg": 0, "IM000001.jpg": 1}, exams)
    with pytest.raises(DrgradeError, match=re.escape(reason)):
        read_source(source)


def test_class_folders_with_and_without_splits(tmp_path):
    for grade, name in [(0, "a"), (3, "b.tif"), (4, "c.jpeg")]:
        _image(tmp_path / "flat" / str(grade) / (name if "." in name else f"{name}.png"))
    flat = read_source(tmp_path / "flat")
    assert flat.layout == "folders"
    assert dict(zip(flat.table["image_id"], flat.table["grade"], strict=True)) == {
        "a": 0, "b": 3, "c": 4,
    }
    _image(tmp_path / "split/train/1/x.jpg")
    _image(tmp_path / "split/test/2/y.jpg")
    split = read_source(tmp_path / "split")
    assert dict(zip(split.table["image_id"], split.table["split"], strict=True)) == {
        "x": "train", "y": "test",
    }


def test_class_folder_that_is_not_a_grade(tmp_path):
    _image(tmp_path / "0/a.png")
    _image(tmp_path / "7/b.png")
    with pytest.raises(DrgradeError, match=r"7.*folder name is not a grade"):
        read_source(tmp_path, "folders")


def test_unlisted_images_are_counted(tmp_path):
    (tmp_path / "trainLabels.csv").write_text("image,level\n1_left,0\n")
    _image(tmp_path / "1_left.jpeg")
    _image(tmp_path / "9_right.jpeg")
    manifest = read_source(tmp_path)
    assert any("1 image(s)" in w and "not in trainLabels.csv" in w for w in manifest.warnings)


# --- bad input: one report naming every offending row ---------------------------------------


def test_bad_rows_are_all_reported_with_file_and_line(tmp_path):
    labels = tmp_path / "trainLabels.csv"
    labels.write_text("image,level\n1_left,0\n1_right,5\n2_left,two\n3_left,1.5\n1_left,1\n,2\n")
    with pytest.raises(DrgradeError) as caught:
        read_source(tmp_path, "eyepacs")
    message = str(caught.value)
    assert "5 problem(s)" in message
    for expected in [
        "trainLabels.csv:3: grade outside 0-4 (value: '5')",
        "trainLabels.csv:4: grade is not a number (value: 'two')",
        "trainLabels.csv:5: grade is not an integer (value: '1.5')",
        "trainLabels.csv:6: duplicate image id (first at",
        "trainLabels.csv:7: empty image name",
    ]:
        assert expected in message


def test_wrong_columns_name_the_file_and_what_was_found(tmp_path):
    (tmp_path / "trainLabels.csv").write_text("name,grade\na,1\n")
    with pytest.raises(DrgradeError, match=r"trainLabels.csv:1: missing column\(s\) image, level"):
        read_source(tmp_path, "eyepacs")


def test_lab_files_of_unequal_length(tmp_path):
    for split in ("train", "test"):
        (tmp_path / f"{split}_img.csv").write_text("1_left\n2_left\n")
        (tmp_path / f"{split}_label.csv").write_text("0\n")
    with pytest.raises(DrgradeError, match="has 2 lines but .* has 1"):
        read_source(tmp_path, "lab")


def test_missing_images_name_their_rows(tmp_path):
    (tmp_path / "trainLabels.csv").write_text("image,level\n1_left,0\n1_right,2\n")
    _image(tmp_path / "1_left.jpeg")
    manifest = read_source(tmp_path)
    assert [(p.line, p.value) for p in manifest.missing] == [(3, "1_right")]
    with pytest.raises(DrgradeError, match=r"trainLabels.csv:3: image not found"):
        manifest.require_images()


def test_auto_detection_asks_when_ambiguous_or_unknown(tmp_path):
    (tmp_path / "trainLabels.csv").write_text("image,level\n")
    _image(tmp_path / "0/a.png")
    with pytest.raises(DrgradeError, match="matches several layouts .*eyepacs.*folders"):
        detect_layout(tmp_path)
    with pytest.raises(DrgradeError, match="cannot tell the dataset layout"):
        detect_layout(tmp_path / "0")


def test_unknown_format_and_missing_source(tmp_path):
    with pytest.raises(DrgradeError, match="unknown --format 'kaggle'"):
        read_source(tmp_path, "kaggle")
    with pytest.raises(DrgradeError, match="no such file or folder"):
        read_source(tmp_path / "nope")


def test_images_a_folder_deeper_are_pointed_out(tmp_path):
    # Kaggle's resized EyePACS unzips into resized_train/resized_train/.
    (tmp_path / "trainLabels.csv").write_text("image,level\n10_left,0\n10_right,1\n13_left,2\n")
    nested = tmp_path / "resized_train" / "resized_train"
    for name in ("10_left", "10_right"):
        _image(nested / f"{name}.jpeg")
    manifest = read_source(tmp_path)
    assert manifest.n_found == 0
    assert manifest.elsewhere == (f"2 of the missing images are in {nested}: give --images "
                                  f"{nested}")
    with pytest.raises(DrgradeError) as caught:
        manifest.require_images()
    assert str(caught.value).endswith(f"give --images {nested}")
    assert "3 of 3 listed images are missing" in str(caught.value)
    following = read_source(tmp_path, images=nested)
    assert following.n_found == 2 and not following.elsewhere  # 13_left is nowhere


def test_no_folder_is_pointed_out_when_the_images_are_nowhere(tmp_path):
    (tmp_path / "trainLabels.csv").write_text("image,level\n10_left,0\n")
    _image(tmp_path / "other" / "99_left.jpeg")
    assert read_source(tmp_path).elsewhere == ""
