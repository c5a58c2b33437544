"""Training logs beside log.csv (TensorBoard, wandb, csv) and evaluation's deployment figures."""

import io
import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from drgrade.config import TrainConfig, load_config
from drgrade.errors import DrgradeError
from drgrade.evaluation.evaluate import evaluate
from drgrade.evaluation.metrics import metrics_table
from drgrade.fit import EpochLog, train
from drgrade.loggers import CONFUSION_TAG, STEP_LOSS, TENSORBOARD_DIR, logger_kind, make_logger
from drgrade.run_folder import best_checkpoint

STEPS = 6  # training batches per epoch
LOG_COLUMNS = ["epoch", "lr", "train_accuracy", "train_kappa", "train_loss", "val_accuracy",
               "val_kappa", "val_loss"]


def _config(shared_data, out, **overrides):
    """tests/test_training.py's 28 px RetinaMNIST run, for two epochs."""
    values = {
        "data": str(shared_data / "retinamnist/retinamnist.npz"), "out": str(out),
        "image_size": 28, "batch_size": 32, "epochs": 2, "optimizer": "adamw", "lr": 2e-3,
        "weight_decay": 0.0, "max_train_batches": STEPS, "num_workers": 0,
        "accelerator": "cpu", "devices": "1", "logger": "tensorboard",
    }
    return load_config(None, values | overrides)


def _events(run: Path) -> EventAccumulator:
    """Everything the run's TensorBoard folder holds (all event files, no sampling)."""
    events = EventAccumulator(str(run / TENSORBOARD_DIR), size_guidance={"scalars": 0,
                                                                         "images": 0})
    events.Reload()
    return events


def _steps(events: EventAccumulator, tag: str) -> list[int]:
    return [event.step for event in events.Scalars(tag)]


def test_tensorboard_logs_steps_epochs_learning_rate_and_confusion(shared_data, tmp_path):
    run = train(_config(shared_data, tmp_path / "run"), progress=False)
    events = _events(run)
    assert _steps(events, STEP_LOSS) == list(range(1, 2 * STEPS + 1))
    log = pd.read_csv(run / "log.csv")
    assert sorted(log.columns) == LOG_COLUMNS  # log.csv is as it was without a logger
    for name in ("val_kappa", "val_accuracy", "train_loss"):
        assert [e.value for e in events.Scalars(name)] == pytest.approx(log[name].tolist())
    [lr] = [tag for tag in events.Tags()["scalars"] if tag.startswith("lr-")]
    assert len(events.Scalars(lr)) == 2 and events.Scalars(lr)[0].value == pytest.approx(2e-3)
    images = events.Images(CONFUSION_TAG)
    assert len(images) == 2
    with Image.open(io.BytesIO(images[-1].encoded_image_string)) as picture:
        assert picture.width > 300 and picture.height > 300


def test_csv_logger_writes_no_tensorboard_folder(shared_data, tmp_path):
    run = train(_config(shared_data, tmp_path / "run", logger="csv", epochs=1,
                        max_train_batches=2), progress=False)
    assert len(pd.read_csv(run / "log.csv")) == 1
    assert not (run / TENSORBOARD_DIR).exists()


def test_auto_picks_tensorboard_when_installed(tmp_path, monkeypatch):
    assert logger_kind("auto") == "tensorboard"
    logger = make_logger(TrainConfig(logger="auto"), tmp_path)
    assert Path(logger.log_dir) == tmp_path / TENSORBOARD_DIR
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now fails
    assert logger_kind("auto") == "csv"
    assert make_logger(TrainConfig(logger="auto"), tmp_path) is False


@pytest.mark.parametrize("kind", ["wandb", "tensorboard"])
def test_a_missing_logger_package_is_a_clear_error(tmp_path, monkeypatch, kind):
    monkeypatch.setitem(sys.modules, kind, None)
    with pytest.raises(DrgradeError, match=rf"logger: {kind} is not installed; `pip install "
                                           rf"{kind}`, or choose --logger"):
        make_logger(TrainConfig(logger=kind), tmp_path)


def test_an_unknown_logger_is_refused(shared_data, tmp_path):
    with pytest.raises(DrgradeError, match="logger: 'mlflow' is not one of auto, csv"):
        _config(shared_data, tmp_path / "run", logger="mlflow")


def test_resume_continues_the_same_logs(shared_data, tmp_path, monkeypatch):
    config = _config(shared_data, tmp_path / "run")
    write_log_row = EpochLog.on_train_epoch_end

    def stop_after_first_epoch(self, trainer, module):
        write_log_row(self, trainer, module)
        trainer.should_stop = True

    with monkeypatch.context() as patch:
        patch.setattr(EpochLog, "on_train_epoch_end", stop_after_first_epoch)
        run = train(config, progress=False)
    assert len(_steps(_events(run), "val_kappa")) == 1
    train(config, resume=True, progress=False)
    folder = run / TENSORBOARD_DIR
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2  # one per process, one folder
    assert not [path for path in folder.iterdir() if path.is_dir()]
    events = _events(run)
    assert _steps(events, STEP_LOSS) == list(range(1, 2 * STEPS + 1))
    kappa = _steps(events, "val_kappa")
    assert len(kappa) == 2 and kappa[0] < kappa[1]
    assert len(events.Images(CONFUSION_TAG)) == 2


def test_evaluation_reports_deployment_figures(tiny_run, tmp_path):
    out = tmp_path / "eval"
    metrics = evaluate(tiny_run, out=out, progress=False, resamples=20)
    figures = json.loads((out / "metrics.json").read_text())["deployment"]
    assert figures == metrics["deployment"]
    assert figures["parameters"] == 11_179_077  # ResNet-18 with 5 outputs
    assert figures["checkpoint_bytes"] == best_checkpoint(tiny_run).stat().st_size
    assert math.isfinite(figures["images_per_second"]) and figures["images_per_second"] > 10
    assert figures["device"]
    assert "deployment: 11,179,077 parameters, checkpoint " in metrics_table(metrics)
