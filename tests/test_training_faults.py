"""Training under faults: killed saves, crafted or truncated checkpoints at resume, a full
disk, a diverging run. Nothing here talks to the network."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from drgrade.checkpoint import read_checkpoint
from drgrade.checkpoint_io import AtomicCheckpointIO
from drgrade.config import load_config
from drgrade.errors import DrgradeError
from drgrade.fit import train
from drgrade.run_folder import last_checkpoint, previous_checkpoint


def _config(shared_data, out, **overrides):
    values = {"data": str(shared_data / "retinamnist/retinamnist.npz"), "out": str(out),
              "image_size": 28, "batch_size": 16, "epochs": 2, "optimizer": "adamw",
              "lr": 2e-3, "max_train_batches": 2, "num_workers": 0, "accelerator": "cpu",
              "devices": "1", "arch": "squeezenet1_1"}
    return load_config(None, values | overrides)


class _Payload:
    """Unpickling this creates the folder `marker`: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _train_cli(args, env=None, timeout=300):
    command = [sys.executable, "-m", "drgrade", "train", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_resume_never_runs_code_even_when_torch_is_told_to(shared_data, tmp_path):
    run = tmp_path / "run"
    train(_config(shared_data, run, epochs=1), progress=False)
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": {}, "loops": _Payload(str(marker))}, last_checkpoint(run))
    previous_checkpoint(run).unlink(missing_ok=True)
    result = _train_cli(["--out", str(run), "--resume", "--epochs", "2"],
                        env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert not marker.exists()
    assert "Traceback" not in result.stderr and "refused" in result.stderr
    assert "weights_only=False" not in result.stderr


def test_a_truncated_last_checkpoint_resumes_from_the_one_before(shared_data, tmp_path, capsys):
    run = tmp_path / "run"
    train(_config(shared_data, run, epochs=2), progress=False)
    assert previous_checkpoint(run).is_file()  # epoch 0's state, replaced by epoch 1's
    whole = last_checkpoint(run).read_bytes()
    last_checkpoint(run).write_bytes(whole[: len(whole) * 4 // 5])  # a copy cut short
    train(_config(shared_data, run, epochs=3), resume=True, progress=False)
    assert "resuming from the state saved before it" in capsys.readouterr().out
    assert read_checkpoint(last_checkpoint(run))["epoch"] == 2


def test_no_readable_state_says_how_to_go_on(shared_data, tmp_path):
    run = tmp_path / "run"
    train(_config(shared_data, run, epochs=1), progress=False)
    last_checkpoint(run).write_bytes(b"PK\x03\x04 cut")
    previous_checkpoint(run).unlink(missing_ok=True)
    with pytest.raises(DrgradeError, match="no readable training state .*best.ckpt"):
        train(_config(shared_data, run, epochs=2), resume=True, progress=False)


def test_a_failed_save_keeps_the_previous_file_and_leaves_no_partial(tmp_path, monkeypatch):
    target = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1}, target)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "elsewhere"))

    def disk_full(obj, handle):
        handle.write(b"x" * 1000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(DrgradeError, match="cannot write .*last.ckpt: No space left on device"):
        io.save_checkpoint({"epoch": 2}, target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
    assert read_checkpoint(target)["epoch"] == 1


def test_kill_9_during_training_leaves_complete_checkpoints(shared_data, tmp_path):
    run = tmp_path / "run"
    args = ["--data", str(shared_data / "retinamnist/retinamnist.npz"), "--out", str(run),
            "--image-size", "28", "--batch-size", "8", "--epochs", "200",
            "--max-train-batches", "1", "--num-workers", "0", "--accelerator", "cpu",
            "--devices", "1", "--arch", "resnet18"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "drgrade", "train", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not previous_checkpoint(run).is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.37)  # well inside a later epoch's saves (each writes ~134 MB)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    for checkpoint in (last_checkpoint(run), previous_checkpoint(run)):
        if checkpoint.is_file():
            read_checkpoint(checkpoint)  # complete, or not there at all
    assert last_checkpoint(run).is_file() or previous_checkpoint(run).is_file()
    # Resuming cleans what the kill left half-written and goes on.
    result = _train_cli([*args[:-6], "--epochs", "1", "--resume", *args[-6:]],
                        env={"OMP_NUM_THREADS": "1"})
    assert not list((run / "checkpoints").glob(".*.partial"))
    assert "Traceback" not in result.stderr


def test_a_diverging_run_stops_with_the_fix(shared_data, tmp_path):
    config = _config(shared_data, tmp_path / "run", head="regression", optimizer="sgd",
                     lr=50.0, epochs=5, max_train_batches=30, arch="resnet18")
    with pytest.raises(DrgradeError, match=r"training diverged in epoch 0: .*Lower --lr \(now "
                                           r"50, e\.g\. to 5\) or clip gradients with "
                                           r"--gradient-clip-val 1\.0"):
        train(config, progress=False)
    # Nothing of the diverged epoch was saved as the run's state.
    assert not last_checkpoint(tmp_path / "run").is_file()


def test_resume_appends_its_command_to_the_environment(shared_data, tmp_path):
    import json

    run = tmp_path / "run"
    train(_config(shared_data, run, epochs=1), progress=False)
    first = json.loads((run / "environment.json").read_text())["command"]
    train(_config(shared_data, run, epochs=2), resume=True, progress=False)
    env = json.loads((run / "environment.json").read_text())
    assert env["command"] == first and len(env["resumed"]) == 1
