"""Training end to end on real RetinaMNIST: log, checkpoints, reload, resume, DDP, errors."""

import subprocess
import sys

import pandas as pd
import pytest
import torch

from drgrade.checkpoint import load_network
from drgrade.config import load_config
from drgrade.data.datamodule import GradingDataModule
from drgrade.errors import DrgradeError
from drgrade.fit import EpochLog, train
from drgrade.run_folder import best_checkpoint, last_checkpoint, read_run_config
from drgrade.training import GradingModule


def _config(shared_data, out, **overrides):
    values = {
        "data": str(shared_data / "retinamnist/retinamnist.npz"), "out": str(out),
        "image_size": 28, "batch_size": 32, "epochs": 3, "optimizer": "adamw", "lr": 2e-3,
        "weight_decay": 0.0, "max_train_batches": 6, "num_workers": 0, "accelerator": "cpu",
        "devices": "1",
    }
    return load_config(None, values | overrides)


def _val_accuracy(checkpoint, config) -> float:
    network, _ = load_network(checkpoint)
    loader = GradingDataModule(config).val_dataloader()[0]
    correct = total = 0
    with torch.no_grad():
        for images, grades in loader:
            correct += (network.decode(network(images)) == grades).sum().item()
            total += len(grades)
    return correct / total


@pytest.mark.parametrize("head", ["classification", "regression"])
def test_train_logs_checkpoints_and_reloads(shared_data, tmp_path, head):
    config = _config(shared_data, tmp_path / "run", head=head, track_test=True)
    run = train(config, progress=False)
    log = pd.read_csv(run / "log.csv")
    assert log["epoch"].tolist() == [0, 1, 2]
    for column in ("train_loss", "train_accuracy", "train_kappa", "val_loss", "val_accuracy",
                   "val_kappa", "test_accuracy", "test_kappa", "lr"):
        assert column in log and log[column].notna().all(), column
    assert log["train_loss"].iloc[-1] < log["train_loss"].iloc[0]
    assert read_run_config(run)["head"] == head
    assert best_checkpoint(run).is_file() and last_checkpoint(run).is_file()
    # The last checkpoint reloads and scores exactly what was logged for its epoch.
    assert _val_accuracy(last_checkpoint(run), config) == pytest.approx(
        log["val_accuracy"].iloc[-1], abs=1e-6)
    # The preprocessing a raw image needs travels inside the checkpoint.
    assert load_network(best_checkpoint(run))[1].image_size == 28


def test_resume_ends_with_the_same_weights(shared_data, tmp_path, monkeypatch):
    common = {"deterministic": True, "epochs": 2, "max_train_batches": 3, "sampler": "progressive",
              "rotation": 10.0, "warmup_epochs": 0.5}
    whole = train(_config(shared_data, tmp_path / "whole", **common), progress=False)

    # Interrupt the same run after its first epoch, as a kill after that epoch's checkpoint.
    write_log_row = EpochLog.on_train_epoch_end

    def stop_after_first_epoch(self, trainer, module):
        write_log_row(self, trainer, module)
        trainer.should_stop = True

    part = _config(shared_data, tmp_path / "part", **common)
    with monkeypatch.context() as patch:
        patch.setattr(EpochLog, "on_train_epoch_end", stop_after_first_epoch)
        train(part, progress=False)
    assert pd.read_csv(tmp_path / "part/log.csv")["epoch"].tolist() == [0]
    with pytest.raises(DrgradeError, match="already holds a run"):
        train(part, progress=False)
    resumed = train(part, resume=True, progress=False)
    a = torch.load(last_checkpoint(whole), weights_only=True)["state_dict"]
    b = torch.load(last_checkpoint(resumed), weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert pd.read_csv(resumed / "log.csv")["epoch"].tolist() == [0, 1]


def test_resume_without_a_run(shared_data, tmp_path):
    with pytest.raises(DrgradeError, match="nothing to resume"):
        train(_config(shared_data, tmp_path / "none"), resume=True, progress=False)


def test_ddp_two_cpu_processes(shared_data, tmp_path):
    run = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "drgrade", "train",
        "--data", str(shared_data / "retinamnist/retinamnist.npz"), "--out", str(run),
        "--image-size", "28", "--batch-size", "16", "--epochs", "1", "--max-train-batches", "4",
        "--num-workers", "0", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_network(last_checkpoint(run))[1].arch == "resnet18"
    assert len(pd.read_csv(run / "log.csv")) == 1


def test_pretrained_from_a_local_weights_file(shared_data, tmp_path):
    from torchvision.models import resnet18

    weights = tmp_path / "imagenet.pth"
    reference = resnet18()
    torch.save(reference.state_dict(), weights)
    config = _config(shared_data, tmp_path / "run", pretrained=True, weights=str(weights),
                     epochs=1, max_train_batches=1, lr=1e-9, optimizer="sgd", momentum=0.0)
    module = GradingModule(config, GradingDataModule(config).model_card())
    assert torch.equal(module.network.model.conv1.weight, reference.conv1.weight)


def test_unknown_arch_is_a_clear_error(shared_data, tmp_path):
    with pytest.raises(DrgradeError, match="resnet19"):
        train(_config(shared_data, tmp_path / "run", arch="resnet19"), progress=False)


def test_raw_dataset_must_be_prepared_first(shared_data, tmp_path):
    config = _config(shared_data, tmp_path / "run")
    config.data = str(shared_data / "idrid-train")
    with pytest.raises(DrgradeError, match="prepare it once first"):
        GradingDataModule(config)
