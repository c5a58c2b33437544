"""Manifest helpers: grade parsing, patient-aware splits, baselines."""

import pandas as pd
import pytest

from drgrade.data.manifest import (
    ALL_TEST,
    SPLIT_FROM,
    assign_splits,
    carve_validation,
    check_fractions,
    majority_grade,
    make_table,
    parse_grade,
    patients_in_several_splits,
)
from drgrade.data.sources import read_source
from drgrade.errors import DrgradeError, Problem


@pytest.mark.parametrize("value, expected", [("0", 0), (" 4 ", 4), ("2.0", 2)])
def test_parse_grade_accepts_integers(value, expected):
    assert parse_grade(value, "f.csv", 2) == expected


@pytest.mark.parametrize("value", ["", "x", "-1", "5", "2.5", "nan"])
def test_parse_grade_rejects_the_rest(value):
    assert isinstance(parse_grade(value, "f.csv", 2), Problem)


def _patients_table(n_patients: int) -> pd.DataFrame:
    rows = []
    for patient in range(n_patients):
        for eye in ("left", "right"):
            rows.append({"image_id": f"{patient}_{eye}", "grade": patient % 5,
                         "patient": str(patient), "eye": eye})
    return make_table(rows)


def test_splits_keep_patients_together_and_are_reproducible():
    table = _patients_table(200)
    first = assign_splits(table, val_fraction=0.1, test_fraction=0.2, seed=3)
    again = assign_splits(table, val_fraction=0.1, test_fraction=0.2, seed=3)
    other = assign_splits(table, val_fraction=0.1, test_fraction=0.2, seed=4)
    assert first["split"].tolist() == again["split"].tolist()
    assert first["split"].tolist() != other["split"].tolist()
    assert patients_in_several_splits(first) == 0
    shares = first["split"].value_counts(normalize=True)
    assert shares["test"] == pytest.approx(0.2, abs=0.03)
    assert shares["val"] == pytest.approx(0.1, abs=0.03)
    # Stratified: every split has every grade in about the same proportion.
    by_split = pd.crosstab(first["split"], first["grade"], normalize="index")
    assert (by_split.max() - by_split.min()).max() < 0.08


def test_splits_keep_given_splits():
    table = _patients_table(50)
    table.loc[:9, "split"] = "test"
    result = assign_splits(table, 0.1, 0.2, seed=0)
    assert (result.loc[:9, "split"] == "test").all()
    assert (result["split"] != "").all()


def test_bad_fraction():
    with pytest.raises(DrgradeError, match="--val-fraction must be in"):
        assign_splits(_patients_table(5), 0.7, 0.1, seed=0)


def test_real_eyepacs_patient_split(shared_data):
    table = read_source(shared_data / "eyepacs-labels").table
    split = assign_splits(table, 0.1, 0.2, seed=0)
    assert patients_in_several_splits(split) == 0
    assert majority_grade(split) == 0


def test_fingerprint_changes_with_the_data(shared_data):
    manifest = read_source(shared_data / "retinamnist/retinamnist.npz")
    before = manifest.fingerprint()
    manifest.table.loc[0, "grade"] = (manifest.table.loc[0, "grade"] + 1) % 5
    assert manifest.fingerprint() != before


def test_split_from_random_draws_every_split_anew():
    table = _patients_table(50)
    table["split"] = "train"
    official = assign_splits(table, 0.1, 0.2, seed=0)
    assert (official["split"] == "train").all()
    fresh = assign_splits(table, 0.1, 0.2, seed=0, split_from="random")
    assert set(fresh["split"]) == {"train", "val", "test"}
    assert patients_in_several_splits(fresh) == 0
    with pytest.raises(DrgradeError, match="--split-from must be one of official, random"):
        assign_splits(table, 0.1, 0.2, seed=0, split_from="kaggle")


def test_a_test_fraction_of_one_makes_the_whole_source_test():
    table = _patients_table(10)
    table.loc[:5, "split"] = "train"
    for split_from in SPLIT_FROM:
        result = assign_splits(table, 0.1, ALL_TEST, seed=0, split_from=split_from)
        assert (result["split"] == "test").all()


@pytest.mark.parametrize("val, test", [(0.5, 0.1), (0.1, 0.5), (1.0, 0.1), (0.1, 0.9), (-0.1, 0)])
def test_fractions_below_one_half_or_the_whole_source(val, test):
    with pytest.raises(DrgradeError, match="must be in \\[0, 0.5\\), or --test-fraction 1"):
        check_fractions(val, test)


def test_tiny_datasets_split_without_emptying_train():
    for n_patients in (1, 2, 3):
        result = assign_splits(_patients_table(n_patients), 0.1, 0.2, seed=0)
        assert (result["split"] == "train").any()
        assert patients_in_several_splits(result) == 0
    with pytest.raises(DrgradeError, match="too few training patients"):
        carve_validation(_patients_table(1).assign(split="train"), 0.1, seed=0)
