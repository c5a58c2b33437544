"""`drgrade export`: one .onnx file that grades like the checkpoint, with nothing else."""

import json
import os

import numpy as np
import onnx
import pandas as pd
import pytest

from drgrade import __version__
from drgrade.cli import main
from drgrade.errors import DrgradeError
from drgrade.inference import export
from drgrade.inference.export import export_onnx
from drgrade.inference.loader import load_grader
from drgrade.inference.onnx_grader import OnnxGrader
from drgrade.inference.predict import predict
from drgrade.inference.torch_grader import TorchGrader
from drgrade.model_card import ONNX_KEY, ModelCard


def test_onnx_file_carries_its_model_card(tiny_run, onnx_model):
    grader = TorchGrader.from_checkpoint(tiny_run, "cpu")
    model = onnx.load(onnx_model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["drgrade.version"] == __version__
    card = ModelCard.from_json(meta[ONNX_KEY], "test")
    assert card == grader.card and card.head == "classification"
    assert json.loads(meta[ONNX_KEY])["grade_names"][4] == "proliferative"
    # One file: the weights are inside, and the batch axis is free.
    assert not list(onnx_model.parent.glob("*.data"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 28, 28]
    onnx_grader = load_grader(onnx_model)
    assert isinstance(onnx_grader, OnnxGrader) and onnx_grader.card == grader.card


def test_onnx_predictions_equal_torch(tiny_run, onnx_model, photographs, odd_folder, tmp_path):
    tables = {}
    for name, model in (("torch", tiny_run), ("onnx", onnx_model)):
        out = tmp_path / f"{name}.csv"
        predict(load_grader(model, "cpu"), [photographs, odd_folder], out, workers=0,
                progress=False)
        tables[name] = pd.read_csv(out, keep_default_na=False)
    torch_table, onnx_table = tables["torch"], tables["onnx"]
    assert len(torch_table) == 23
    for column in ("image", "grade", "referable", "error"):
        assert (torch_table[column] == onnx_table[column]).all(), column
    graded = torch_table["error"] == ""
    columns = [f"p{g}" for g in range(5)]
    np.testing.assert_allclose(onnx_table.loc[graded, columns].astype(float),
                               torch_table.loc[graded, columns].astype(float), atol=1e-4)


def test_regression_export_keeps_the_cut_points(regression_run, photographs, tmp_path):
    grader = TorchGrader.from_checkpoint(regression_run, "cpu")
    report = export_onnx(grader, tmp_path / "regression.onnx", [photographs / "IDRiD_003.jpg"])
    assert report.output == "score" and report.max_difference <= 1e-4
    assert str(report).startswith(f"exported {report.path}\nmax |onnxruntime - PyTorch| of "
                                  f"the score = ")
    assert str(report).endswith(f"on 1 photographs ({photographs}) (tolerance 1e-04)")
    onnx_grader = OnnxGrader(report.path)
    assert onnx_grader.is_regression
    assert onnx_grader.card.cut_points == pytest.approx(grader.network.thresholds.tolist())
    for path in sorted(photographs.glob("*.jpg"))[:2]:
        expected, actual = grader.predict_image(path), onnx_grader.predict_image(path)
        assert actual.grade == expected.grade
        assert actual.score == pytest.approx(expected.score, abs=1e-4)


def test_cli_export_errors(tiny_run, tmp_path, monkeypatch, capsys):
    assert main(["export", str(tiny_run), "--onnx", str(tmp_path / "model.pt")]) == 2
    assert "model.pt: the file name must end in .onnx" in capsys.readouterr().err
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # any difference, even 0, is too much
    out = tmp_path / "bad.onnx"
    assert main(["export", str(tiny_run), "--onnx", str(out)]) == 2
    error = capsys.readouterr().err
    assert "logits differ from PyTorch's by" in error and "on 8 random inputs" in error
    assert "the file was removed" in error and not out.exists()


def test_onnx_without_drgrade_metadata(onnx_model, tmp_path):
    model = onnx.load(onnx_model)
    del model.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(model, plain)
    with pytest.raises(DrgradeError, match="no drgrade metadata"):
        load_grader(plain)
    (tmp_path / "junk.onnx").write_text("not a model")
    with pytest.raises(DrgradeError, match="not a loadable ONNX model"):
        load_grader(tmp_path / "junk.onnx")


def test_export_never_creates_folders_nor_misnames_files(tiny_run, onnx_model, tmp_path,
                                                         capsys):
    missing = tmp_path / "nonexistent" / "dir" / "m.onnx"
    assert main(["export", str(tiny_run), "--onnx", str(missing)]) == 2
    assert "the folder" in capsys.readouterr().err and not missing.parent.parent.exists()
    # An .onnx file or random bytes where a checkpoint belongs: said plainly.
    assert main(["export", str(onnx_model), "--onnx", str(tmp_path / "again.onnx")]) == 2
    assert "an ONNX model, not a checkpoint" in capsys.readouterr().err
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(os.urandom(4096))
    assert main(["evaluate", str(junk), "--data", "x"]) == 2
    error = capsys.readouterr().err
    assert "not a loadable checkpoint" in error and "could run code" not in error
