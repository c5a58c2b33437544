"""The command line: help, inspect, train's summary, and errors printed without a traceback."""

import subprocess
import sys

import pandas as pd
import pytest

from drgrade.cli import main


def test_inspect_lab_split_on_label_files_alone(shared_data, capsys):
    assert main(["inspect", str(shared_data / "eyepacs-labels/lab3-split"), "--format", "lab"]) == 0
    out = capsys.readouterr().out
    assert "layout: lab" in out
    assert "found on disk: 0 of 35,126" in out
    assert "train     28,100" in out and "test       7,026" in out
    assert "always predicting grade 0" in out
    assert "test     73.36%" in out
    assert "5618 patients have an eye in more than one split" in out


def test_user_error_prints_message_and_exits_nonzero(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no such file or folder" in err
    assert "Traceback" not in err


def test_console_entry_points():
    result = subprocess.run([sys.executable, "-m", "drgrade", "--help"],
                            capture_output=True, text=True, check=True)
    assert "inspect" in result.stdout and "prepare" in result.stdout


def test_train_says_which_epoch_it_chose_and_what_to_run_next(shared_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(shared_data / "retinamnist/retinamnist.npz"),
                 "--out", str(run), "--epochs", "2", "--max-train-batches", "2",
                 "--image-size", "28", "--batch-size", "32", "--num-workers", "0",
                 "--logger", "csv"]) == 0
    out = capsys.readouterr().out
    log = pd.read_csv(run / "log.csv")
    best = log["val_kappa"].idxmax()  # best.ckpt keeps the first epoch with the top kappa
    assert (f"best validation kappa {log['val_kappa'][best]:.3f}, at epoch "
            f"{log['epoch'][best] + 1} of 2 (checkpoints/best.ckpt)") in out
    assert f"`drgrade evaluate {run}`" in out


def test_search_help_states_the_default_number_of_trials(capsys):
    from drgrade.search import DEFAULT_TRIALS

    # The CLI imports search lazily, so its help repeats the number: it must stay the same.
    with pytest.raises(SystemExit) as ended:
        main(["search", "--help"])
    assert ended.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"(default: the file's `trials:`, else {DEFAULT_TRIALS})" in help_text
