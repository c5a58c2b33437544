"""Synthetic fundus photographs: deterministic, fundus-like, lesions that follow the grade."""

import numpy as np
import pytest

from drgrade.data.sources import read_source
from drgrade.data.synthetic import synthetic_fundus, write_synthetic_dataset
from drgrade.errors import DrgradeError

SIZE = (320, 240)


def picture(grade: int, seed: int, size=SIZE, eye=None) -> np.ndarray:
    return np.asarray(synthetic_fundus(grade, np.random.default_rng(seed), size, eye=eye))


def test_same_seed_same_picture_other_seed_other_picture():
    assert np.array_equal(picture(3, 7), picture(3, 7))
    assert not np.array_equal(picture(3, 7), picture(3, 8))


def test_size_and_mode():
    image = synthetic_fundus(2, np.random.default_rng(0), (301, 203))
    assert image.mode == "RGB" and image.size == (301, 203)


def test_random_sizes_are_camera_like():
    for seed in range(8):
        width, height = synthetic_fundus(0, np.random.default_rng(seed)).size
        assert 600 <= width <= 1200
        assert 1.0 <= width / height <= 1.5 + 1e-2


def test_dark_surround_bright_centre():
    for seed in range(4):
        image = picture(0, seed).astype(float)
        corners = [image[:12, :12], image[:12, -12:], image[-12:, :12], image[-12:, -12:]]
        assert max(c.mean() for c in corners) < 15
        centre = image[100:140, 140:180]
        assert centre[..., 0].mean() > 100  # red dominates the fundus
        assert centre[..., 0].mean() > centre[..., 2].mean() + 50


def test_rim_darker_than_centre():
    image = picture(0, 3, size=(400, 400)).astype(float).sum(axis=2)
    # Along the horizontal diameter, away from the disc (which may sit on either side).
    centre = image[195:205, 190:210].mean()
    rims = [image[195:205, 25:35].mean(), image[195:205, 365:375].mean()]
    assert min(rims) < 0.85 * centre


def test_some_fields_are_clipped_top_and_bottom():
    # EyePACS photographs often cut the round field at the top and bottom of the frame.
    clipped = [picture(0, seed, size=(360, 240))[0, 150:210].mean() > 40 for seed in range(20)]
    assert any(clipped) and not all(clipped)


def test_optic_disc_is_nasal():
    for seed in range(3):
        for eye, side in (("right", 1), ("left", -1)):
            brightness = picture(0, seed, eye=eye).astype(float).sum(axis=2)
            column = np.unravel_index(brightness.argmax(), brightness.shape)[1]
            assert side * (column - SIZE[0] / 2) > 0


def lesion_pixels(grade: int, seed: int) -> int:
    """Pixels that the grade's lesions changed: the same seed draws the same eye."""
    changed = np.abs(picture(grade, seed).astype(int) - picture(0, seed).astype(int))
    return int((changed.max(axis=2) > 25).sum())


def test_lesions_grow_with_grade():
    seeds = range(5)
    totals = [sum(lesion_pixels(grade, seed) for seed in seeds) for grade in range(5)]
    assert totals[0] == 0
    assert totals == sorted(totals) and len(set(totals)) == 5
    for seed in seeds:  # every diseased eye shows something
        assert lesion_pixels(1, seed) > 0


def test_exudates_yellow_only_from_moderate():
    def yellow(image: np.ndarray) -> int:
        r, g, b = (image[..., i].astype(int) for i in range(3))
        return int(((r > 180) & (g > 150) & (b < 110) & (g - b > 80)).sum())

    by_grade = [sum(yellow(picture(grade, seed)) for seed in range(5)) for grade in range(5)]
    assert by_grade[0] == by_grade[1]  # the optic disc is the only yellow here
    assert by_grade[2] > by_grade[0] and by_grade[3] > by_grade[0]


def test_bad_grade_is_refused():
    with pytest.raises(DrgradeError, match="grade"):
        synthetic_fundus(5, np.random.default_rng(0), SIZE)


def test_dataset_reads_back_as_eyepacs(tmp_path):
    out = write_synthetic_dataset(tmp_path / "synth", 9, seed=3, widths=(160, 200))
    manifest = read_source(out)
    assert manifest.layout == "eyepacs"
    assert manifest.n_found == 9 and not manifest.missing and not manifest.warnings
    table = manifest.table.set_index("image_id")
    labels = (out / "trainLabels.csv").read_text().splitlines()
    assert labels[0] == "image,level"
    for line in labels[1:]:
        image_id, level = line.split(",")
        patient, eye = image_id.rsplit("_", 1)
        assert table.loc[image_id, "grade"] == int(level)
        assert (table.loc[image_id, "patient"], table.loc[image_id, "eye"]) == (patient, eye)
    # Two eyes per patient (the ninth image is a lone left eye).
    assert sorted(table["patient"].value_counts().tolist()) == [1, 2, 2, 2, 2]
    assert (out / "train" / f"{labels[1].split(',')[0]}.jpeg").is_file()


def test_dataset_is_deterministic_and_follows_weights(tmp_path):
    a = write_synthetic_dataset(tmp_path / "a", 6, seed=1, grade_weights=(0, 0, 1, 0, 0),
                                widths=(120, 140))
    b = write_synthetic_dataset(tmp_path / "b", 6, seed=1, grade_weights=(0, 0, 1, 0, 0),
                                widths=(120, 140))
    assert (a / "trainLabels.csv").read_text() == (b / "trainLabels.csv").read_text()
    assert set(read_source(a).table["grade"]) == {2}
    for path in sorted((a / "train").iterdir()):
        assert path.read_bytes() == (b / "train" / path.name).read_bytes()


def test_eyes_of_a_patient_mostly_agree(tmp_path):
    from drgrade.data.synthetic import DEFAULT_GRADE_WEIGHTS, synthetic_labels

    rows = synthetic_labels(2000, 0, np.array(DEFAULT_GRADE_WEIGHTS))
    grades = np.array([grade for _, grade in rows])
    counts = np.bincount(grades, minlength=5) / len(grades)
    assert np.allclose(counts, DEFAULT_GRADE_WEIGHTS, atol=0.04)
    assert (grades[0::2] == grades[1::2]).mean() > 0.6


@pytest.mark.parametrize("weights", [(1, 1), (1, -1, 1, 1, 1), (0, 0, 0, 0, 0)])
def test_bad_weights_are_refused(tmp_path, weights):
    with pytest.raises(DrgradeError, match="grade_weights"):
        write_synthetic_dataset(tmp_path, 4, grade_weights=weights)
