"""`drgrade predict`: real photographs in, one CSV row per file out, unusable files listed."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from drgrade.cli import main
from drgrade.errors import DrgradeError
from drgrade.inference import predict as predict_module
from drgrade.inference import resume
from drgrade.inference.predict import find_images, iter_batches, predict
from drgrade.inference.resume import ResumablePredictions
from drgrade.inference.torch_grader import TorchGrader

COLUMNS = ["image", "grade", "grade_name", "p0", "p1", "p2", "p3", "p4", "referable", "error",
           "warning"]


@pytest.fixture(scope="module")
def grader(tiny_run) -> TorchGrader:
    return TorchGrader.from_checkpoint(tiny_run, "cpu")


def test_predict_photographs_and_unusable_files(grader, photographs, odd_files, odd_folder,
                                                tmp_path):
    out = tmp_path / "predictions.csv"
    summary = predict(grader, [photographs, odd_folder], out, batch_size=8, workers=1,
                      progress=False)
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == COLUMNS
    assert len(table) == 20 + len(odd_files)
    graded = table[table["error"] == ""]
    assert len(graded) == summary.graded == 20
    probabilities = graded[[f"p{g}" for g in range(5)]].astype(float).to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert (graded["grade"].astype(int).to_numpy() == probabilities.argmax(axis=1)).all()
    assert (graded["referable"] == np.where(graded["grade"].astype(int) >= 2, "True",
                                            "False")).all()
    failed = table[table["error"] != ""].set_index("image")
    assert len(summary.failed) == len(odd_files)
    for path, reason in odd_files.items():
        row = failed.loc[str(path)]
        assert reason in row["error"].lower(), row["error"]
        assert row["grade"] == row["grade_name"] == row["p0"] == row["referable"] == ""
    printed = str(summary)
    assert "graded 20, failed 3" in printed and "notes.jpg: not an image" in printed
    assert not out.with_name(out.name + ".partial").exists()


def test_batches_match_single_images(grader, photographs):
    # Worker processes and batching must not change any output.
    images = find_images([photographs])[:5]
    batched = [p for b in iter_batches(grader, images, batch_size=2, workers=2)
               for p in b.predictions]
    for path, prediction in zip(images, batched, strict=True):
        single = grader.predict_image(path)
        assert prediction.image == single.image == str(path)
        np.testing.assert_allclose(prediction.probabilities, single.probabilities, atol=1e-6)


def test_tta_averages_the_flips(grader, photographs):
    images = find_images([photographs])[:4]
    [batch] = iter_batches(grader, images, batch_size=4, tta=True)
    flips = np.mean([grader.probabilities(np.ascontiguousarray(np.flip(batch.inputs, d)))
                     for d in ((), (3,), (2,), (2, 3))], axis=0)
    np.testing.assert_allclose([p.probabilities for p in batch.predictions], flips, atol=1e-6)


def test_kaggle_format(grader, photographs, odd_files, odd_folder, tmp_path):
    out = tmp_path / "submission.csv"
    summary = predict(grader, [photographs, odd_folder], out, kaggle=True, workers=0,
                      progress=False)
    table = pd.read_csv(out)
    assert list(table.columns) == ["image", "level"]
    assert table["image"].tolist() == sorted(p.stem for p in photographs.glob("*.jpg"))
    assert table["level"].between(0, 4).all()
    assert len(summary.failed) == len(odd_files)  # printed, not written


def test_kaggle_refuses_repeated_ids(grader, photographs, tmp_path):
    twin = tmp_path / "other"
    twin.mkdir()
    (twin / "IDRiD_001.jpg").write_bytes((photographs / "IDRiD_001.jpg").read_bytes())
    with pytest.raises(DrgradeError, match="--kaggle: image ids must be unique.*IDRiD_001"):
        predict(grader, [photographs, twin], tmp_path / "k.csv", kaggle=True, progress=False)


def test_regression_head_writes_scores(regression_run, photographs, tmp_path):
    grader = TorchGrader.from_checkpoint(regression_run, "cpu")
    out = tmp_path / "scores.csv"
    predict(grader, sorted(photographs.glob("*.jpg"))[:3], out, workers=0, progress=False)
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == ["image", "grade", "grade_name", "score", "referable", "error",
                                   "warning"]
    cuts = np.array(grader.card.cut_points)
    assert (np.searchsorted(cuts, table["score"].astype(float)) == table["grade"]).all()


def test_find_images(photographs, tmp_path):
    (tmp_path / "nested/deeper").mkdir(parents=True)
    (tmp_path / "nested/deeper/a.JPG").write_bytes(b"")
    (tmp_path / "nested/readme.txt").write_text("")
    assert find_images([tmp_path]) == [tmp_path / "nested/deeper/a.JPG"]
    # A folder given twice, or a file in it given again, is graded once.
    assert len(find_images([photographs, photographs / "IDRiD_001.jpg", photographs])) == 20
    with pytest.raises(DrgradeError, match="no such file or folder"):
        find_images([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DrgradeError, match="no images in"):
        find_images([tmp_path / "empty"])


def test_cli_predict(tiny_run, photographs, odd_folder, tmp_path, capsys):
    out = tmp_path / "cli.csv"
    assert main(["predict", str(tiny_run), str(photographs), str(odd_folder / "black.png"),
                 "--out", str(out), "--batch-size", "16", "--tta", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "graded 20, failed 1" in printed and f"written: {out}" in printed
    assert len(pd.read_csv(out)) == 21
    assert main(["predict", str(tiny_run), str(photographs), "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err


def test_a_greyscale_photograph_is_graded_with_a_warning(grader, photographs, tmp_path):
    from PIL import Image

    grey = tmp_path / "grey.png"
    with Image.open(photographs / "IDRiD_001.jpg") as photo:
        photo.convert("L").reduce(4).save(grey)
    out = tmp_path / "grey.csv"
    summary = predict(grader, [grey, photographs / "IDRiD_002.jpg"], out, workers=0,
                      progress=False)
    table = pd.read_csv(out, keep_default_na=False).set_index("image")
    assert table.loc[str(grey), "grade"] != "" and "colour" in table.loc[str(grey), "warning"]
    assert table.loc[str(photographs / "IDRiD_002.jpg"), "warning"] == ""
    assert f"warning: {grey}" in str(summary)


def test_broken_links_in_a_folder_are_rows_with_the_reason(grader, photographs, tmp_path):
    folder = tmp_path / "scan"
    folder.mkdir()
    (folder / "a.jpg").symlink_to(photographs / "IDRiD_001.jpg")
    (folder / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    out = tmp_path / "scan.csv"
    summary = predict(grader, [folder], out, workers=0, progress=False)
    table = pd.read_csv(out, keep_default_na=False).set_index("image")
    assert len(table) == 2 and summary.graded == 1
    assert table.loc[str(folder / "gone.jpg"), "error"] == "file not found"


def test_outputs_that_cannot_be_written_are_one_line_errors(tiny_run, photographs, tmp_path,
                                                            capsys):
    photo = str(photographs / "IDRiD_001.jpg")
    assert main(["predict", str(tiny_run), photo, "--out", str(tmp_path)]) == 2
    assert "it is a folder; give a file name" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["predict", str(tiny_run), photo, "--out", str(tmp_path / "file/p.csv")]) == 2
    assert "cannot create the folder" in capsys.readouterr().err
    assert main(["predict", str(tiny_run), photo, "--out", str(tmp_path / "p.csv"),
                 "--workers", "-1"]) == 2
    assert "--workers must be 0" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


def _stop_after(monkeypatch, batches: int) -> None:
    """Make predict save its state after every batch and stop as a kill would, `batches`
    batches in: after saving, with half a row written after it."""
    monkeypatch.setattr(resume, "SAVE_EVERY_S", 0.0)
    save = ResumablePredictions.save
    saved = []

    def save_then_stop(self, handle, done, summary):
        save(self, handle, done, summary)
        saved.append(done)
        if len(saved) == batches:
            handle.write("half a ro")
            handle.flush()
            raise KeyboardInterrupt

    monkeypatch.setattr(ResumablePredictions, "save", save_then_stop)


def test_an_interrupted_predict_continues_where_it_stopped(grader, photographs, odd_folder,
                                                          tmp_path, monkeypatch):
    paths = [photographs, odd_folder]
    whole = predict(grader, paths, tmp_path / "whole.csv", batch_size=8, progress=False)
    out = tmp_path / "pred.csv"
    with monkeypatch.context() as patch:
        _stop_after(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            predict(grader, paths, out, batch_size=8, progress=False)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.glob("pred.csv*")) == ["pred.csv.part",
                                                                  "pred.csv.part.json"]
    started = []
    with monkeypatch.context() as patch:
        def recorded(*args, start=0, **kwargs):
            started.append(start)
            return iter_batches(*args, start=start, **kwargs)

        patch.setattr(predict_module, "iter_batches", recorded)
        resumed = predict(grader, paths, out, batch_size=8, progress=False)
    assert started == [16]  # only the photographs after the two saved batches
    assert resumed.resumed == f"resumed {out}.part: 16 photograph(s) were graded before"
    # The same rows and the same summary as the run that was never interrupted.
    assert out.read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert str(resumed).splitlines()[1:-1] == str(whole).splitlines()[:-1]
    assert [p.name for p in tmp_path.glob("pred.csv*")] == ["pred.csv"]


def test_a_rerun_with_other_photographs_starts_over(grader, photographs, odd_folder, tmp_path,
                                                    monkeypatch):
    out = tmp_path / "pred.csv"
    with monkeypatch.context() as patch:
        _stop_after(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            predict(grader, [photographs, odd_folder], out, batch_size=8, progress=False)
    summary = predict(grader, [photographs], out, batch_size=8, progress=False)
    assert "that this run cannot continue" in summary.resumed
    table = pd.read_csv(out, keep_default_na=False)
    assert len(table) == summary.graded == 20 and not summary.failed


def test_a_resumed_run_names_heat_maps_as_an_uninterrupted_one(grader, photographs, tmp_path,
                                                               monkeypatch):
    # Same-named photographs in two folders: the second one's heat map is NAME-2.png.
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.jpg").symlink_to(photographs / "IDRiD_001.jpg")
    paths = [tmp_path / "a", tmp_path / "b"]
    predict(grader, paths, tmp_path / "whole.csv", batch_size=1, explain=tmp_path / "whole",
            progress=False)
    out = tmp_path / "pred.csv"
    with monkeypatch.context() as patch:
        _stop_after(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            predict(grader, paths, out, batch_size=1, explain=tmp_path / "maps",
                    progress=False)
    predict(grader, paths, out, batch_size=1, explain=tmp_path / "maps", progress=False)
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["x-2.png", "x.png"]
    whole = pd.read_csv(tmp_path / "whole.csv", keep_default_na=False)
    resumed = pd.read_csv(out, keep_default_na=False)
    assert [Path(p).name for p in resumed["heat_map"]] == [Path(p).name
                                                           for p in whole["heat_map"]]


def test_the_state_is_saved_at_most_every_few_seconds(tmp_path, monkeypatch):
    monkeypatch.setattr(resume, "SAVE_EVERY_S", 3600.0)
    rows = ResumablePredictions(tmp_path / "p.csv", key="k")
    with rows.part.open("w") as handle:
        for done in (8, 16):
            handle.write("row\n" * 8)
            rows.save(handle, done, lambda: {})
    state = json.loads(rows.state_file.read_text())
    assert (state["done"], state["bytes"]) == (8, 32)  # the second batch waited its turn
