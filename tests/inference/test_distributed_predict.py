"""`drgrade predict --devices N`: Lightning's predict loop writes the single-process CSV."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from drgrade.cli import main
from drgrade.distributed_predict import predict_distributed

PHOTOGRAPHS = 12


@pytest.fixture(scope="module")
def archive(shared_data, tmp_path_factory):
    """Twelve IDRiD photographs (links) and one file that is not an image."""
    folder = tmp_path_factory.mktemp("archive")
    for photo in sorted((shared_data / "idrid-train/images").glob("*.jpg"))[:PHOTOGRAPHS]:
        (folder / photo.name).symlink_to(photo)
    (folder / "IDRiD_000_notes.jpg").write_text("not a photograph")
    return folder


@pytest.fixture(scope="module")
def single(tiny_run, archive, tmp_path_factory):
    """The CSVs of the single-process path, plain and Kaggle."""
    folder = tmp_path_factory.mktemp("single")
    for name, extra in (("plain.csv", []), ("kaggle.csv", ["--kaggle"])):
        main(["predict", str(tiny_run), str(archive), "--out", str(folder / name),
              "--workers", "0", "--batch-size", "5", *extra])
    return folder


def assert_same_csv(path, expected) -> None:
    """Same columns, rows and order; probabilities within 1e-5 (and any other column equal)."""
    got, want = (pd.read_csv(p, keep_default_na=False) for p in (path, expected))
    assert list(got.columns) == list(want.columns)
    probabilities = [c for c in want.columns if c.startswith("p")]
    pd.testing.assert_frame_equal(got.drop(columns=probabilities),
                                  want.drop(columns=probabilities))
    # Empty cells (the unusable file) as NaN, which assert_allclose takes as equal.
    np.testing.assert_allclose(got[probabilities].replace("", np.nan).to_numpy(float),
                               want[probabilities].replace("", np.nan).to_numpy(float),
                               atol=1e-5)


def test_two_cpu_processes_write_the_single_process_csv(tiny_run, archive, single, tmp_path):
    out = tmp_path / "out" / "predictions.csv"
    command = [sys.executable, "-m", "drgrade", "predict", str(tiny_run), str(archive),
               "--out", str(out), "--devices", "2", "--accelerator", "cpu", "--workers", "0",
               "--batch-size", "3"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_csv(out, single / "plain.csv")
    table = pd.read_csv(out, keep_default_na=False)
    assert len(table) == PHOTOGRAPHS + 1 and (table["error"] != "").sum() == 1
    assert sorted(p.name for p in out.parent.iterdir()) == ["predictions.csv"]  # parts gone
    assert result.stdout.count("graded 12, failed 1") == 1  # rank 0 alone reports


@pytest.mark.parametrize("write_interval", ["batch", "epoch"])
def test_lightning_loop_in_one_process_kaggle(tiny_run, archive, single, tmp_path,
                                              write_interval):
    out = tmp_path / "kaggle.csv"
    summary = predict_distributed(tiny_run, [archive], out, accelerator="cpu", batch_size=5,
                                  kaggle=True, write_interval=write_interval, progress=False)
    assert summary.graded == PHOTOGRAPHS and len(summary.failed) == 1
    assert out.read_text() == (single / "kaggle.csv").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kaggle.csv"]


def test_onnx_and_explain_are_refused(tiny_run, archive, tmp_path, capsys):
    base = ["predict", str(tiny_run), str(archive), "--out", str(tmp_path / "p.csv"),
            "--devices", "2"]
    assert main(["predict", str(tmp_path / "model.onnx"), *base[2:]]) == 2
    assert "--devices/--num-nodes run the PyTorch checkpoint" in capsys.readouterr().err
    assert main([*base, "--explain", str(tmp_path / "maps")]) == 2
    assert "--explain writes heat maps in one process; drop --devices" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()
