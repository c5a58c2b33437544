"""The command line: help, inspect, and errors printed without a traceback."""

import subprocess
import sys

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
