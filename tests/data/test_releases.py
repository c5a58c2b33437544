"""Official splits read as the releases ship: IDRiD's 'B. Disease Grading', Kaggle's EyePACS."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from drgrade.cli import main
from drgrade.data.manifest import patients_in_several_splits, split_counts
from drgrade.data.sources import read_prepared, read_source
from drgrade.data.sources.idrid import IDRID_RELEASE, IDRID_SETS
from drgrade.errors import DrgradeError

N_TRAIN, N_TEST = 40, 20


def test_idrid_release_keeps_its_split_given_the_folder_its_parent_or_doubled(idrid_release):
    doubled = idrid_release.parent.parent / "doubled" / IDRID_RELEASE
    doubled.mkdir(parents=True)
    (doubled / IDRID_RELEASE).symlink_to(idrid_release)  # as some unzip tools nest it
    for source in (idrid_release, idrid_release.parent, doubled.parent, doubled):
        for layout in ("auto", "idrid"):
            manifest = read_source(source, layout)
            table = manifest.table.set_index("image_id")
            assert manifest.layout == "idrid" and not manifest.warnings, source
            assert split_counts(manifest.table).sum(axis=1).to_dict() == {
                "train": N_TRAIN, "test": N_TEST}
            assert table.index.is_unique and manifest.n_found == N_TRAIN + N_TEST
            # Same name, two people: ids and patients apart, each with its own photograph.
            assert table.loc["train/IDRiD_001", "split"] == "train"
            assert table.loc["test/IDRiD_001", "split"] == "test"
            assert "a. Training Set" in table.loc["train/IDRiD_001", "path"]
            assert "b. Testing Set" in table.loc["test/IDRiD_001", "path"]
            assert manifest.table["patient"].nunique() == N_TRAIN + N_TEST
            assert patients_in_several_splits(manifest.table) == 0
            assert table.loc["test/IDRiD_001", "grade"] == 3  # IDRiD_101's grade
            assert table.loc["train/IDRiD_001", "macular_edema_risk"] == "2"


def test_idrid_release_prepared_keeps_both_idrid_001_apart(idrid_release, tmp_path, capsys):
    out = tmp_path / "prepared"
    assert main(["prepare", str(idrid_release.parent), "--out", str(out), "--size", "64",
                 "--workers", "1"]) == 0
    assert "splits: train 40, test 20" in capsys.readouterr().out  # official: val comes later
    table = read_prepared(out, None, None).table.set_index("image_id")
    assert len(table) == N_TRAIN + N_TEST and not (table["split"] == "val").any()
    files = [Path(table.loc[f"{split}/IDRiD_001", "path"]) for split in ("train", "test")]
    assert files[0] != files[1] and all(f.is_file() and f.parent == out / "images" for f in files)
    assert all(c.isalnum() or c in "._-" for f in files for c in f.name)
    assert len({Path(p).name for p in table["path"]}) == len(table)
    pixels = [np.asarray(Image.open(f), dtype=float) for f in files]
    assert np.abs(pixels[0] - pixels[1]).mean() > 5  # two different photographs
    assert Path(table.loc["test/IDRiD_001", "source_path"]).resolve().name == "IDRiD_101.jpg"


def test_idrid_release_refuses_an_images_folder_it_would_ignore(idrid_release, tmp_path):
    with pytest.raises(DrgradeError, match="--images .* give --images only with --labels"):
        read_source(idrid_release, "idrid", images=tmp_path)


def test_idrid_single_csv_form_is_unchanged(shared_data):
    manifest = read_source(shared_data / "idrid-train")
    assert manifest.table["image_id"].iloc[0] == "IDRiD_001"
    assert (manifest.table["split"] == "").all()


# --- EyePACS as Kaggle ships it -----------------------------------------------------------


def test_eyepacs_release_official_split(eyepacs_release, tmp_path):
    root = eyepacs_release(tmp_path / "eyepacs")
    manifest = read_source(root)
    assert manifest.layout == "eyepacs" and not manifest.warnings
    assert split_counts(manifest.table).sum(axis=1).to_dict() == {"train": 12, "val": 4, "test": 4}
    assert manifest.n_found == 20 and manifest.table["image_id"].is_unique
    solution = pd.read_csv(root / "retinopathy_solution.csv")
    table = manifest.table.set_index("image_id")
    for name, grade, usage in solution.values:
        assert table.loc[name, "grade"] == grade
        assert table.loc[name, "split"] == {"Public": "val", "Private": "test"}[usage]
        assert Path(table.loc[name, "path"]).parent == root / "test"


def test_eyepacs_test_folder_without_solution_is_left_out_with_the_reason(eyepacs_release,
                                                                          tmp_path):
    root = eyepacs_release(tmp_path / "eyepacs")
    (root / "retinopathy_solution.csv").unlink()
    manifest = read_source(root)
    assert len(manifest.table) == 12 and (manifest.table["split"] == "").all()
    [warning] = manifest.warnings
    assert warning.startswith(f"8 image(s) in {root / 'test'} left out")
    assert "retinopathy_solution.csv" in warning and "kaggle competitions download" in warning


def test_eyepacs_solution_with_a_bad_usage_names_its_line(eyepacs_release, tmp_path):
    root = eyepacs_release(tmp_path / "eyepacs")
    solution = root / "retinopathy_solution.csv"
    solution.write_text(solution.read_text().replace("Private", "private", 1))
    with pytest.raises(DrgradeError, match=r"retinopathy_solution.csv:6: Usage must be Public"):
        read_source(root)


@pytest.mark.parametrize("flags, expected", [
    ([], {"train": 12, "val": 4, "test": 4}),
    (["--all-test"], {"test": 20}),
    (["--test-fraction", "1"], {"test": 20}),
])
def test_cli_split_from_official_or_the_whole_source_as_test(eyepacs_release, tmp_path, flags,
                                                             expected):
    root = eyepacs_release(tmp_path / "eyepacs")
    out = tmp_path / "prepared"
    assert main(["prepare", str(root), "--out", str(out), "--size", "32", "--workers", "1",
                 *flags]) == 0
    table = read_prepared(out, None, None).table
    assert table["split"].value_counts().to_dict() == expected


def test_cli_split_from_random_draws_a_new_patient_grouped_split(eyepacs_release, tmp_path):
    root = eyepacs_release(tmp_path / "eyepacs", n_train=40, n_test=20)
    official = read_source(root).table.set_index("image_id")["split"]
    out = tmp_path / "prepared"
    assert main(["prepare", str(root), "--out", str(out), "--size", "32", "--workers", "1",
                 "--split-from", "random", "--test-fraction", "0.25"]) == 0
    table = read_prepared(out, None, None).table
    assert set(table["split"]) == {"train", "val", "test"}
    assert patients_in_several_splits(table) == 0
    assert (table.set_index("image_id")["split"] != official.loc[table["image_id"]]).any()


def test_cli_refuses_a_bad_split_option(eyepacs_release, tmp_path, capsys):
    root = eyepacs_release(tmp_path / "eyepacs", n_train=2, n_test=2)
    args = ["prepare", str(root), "--out", str(tmp_path / "out")]
    assert main([*args, "--test-fraction", "0.7"]) == 2
    assert "--test-fraction must be in [0, 0.5), or --test-fraction 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--split-from", "kaggle"])
    assert "invalid choice: 'kaggle'" in capsys.readouterr().err


def test_idrid_release_missing_image_is_looked_for_in_its_own_set(idrid_release, tmp_path):
    release = shutil.copytree(idrid_release, tmp_path / IDRID_RELEASE, symlinks=True)
    (release / IDRID_SETS["test"][0] / "IDRiD_005.jpg").unlink()
    [missing] = read_source(release).missing
    assert (missing.file, missing.line, missing.value) == (
        str(release / IDRID_SETS["test"][1]), 6, "test/IDRiD_005")
    assert missing.reason == f"image not found in {release / IDRID_SETS['test'][0]}"
