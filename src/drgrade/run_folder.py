"""The run folder: everything needed to trace a number back to the command that made it.

    RUN/config.yaml        resolved config (every option, defaults included)
    RUN/environment.json   versions, device, data fingerprint, command line, and
                           `stopped_early` (epoch, reason) when early stopping ended the run
    RUN/log.csv            one row per epoch: losses, accuracy, kappa, learning rate
    RUN/tensorboard/       the same and more for TensorBoard (option logger; wandb: RUN/wandb/)
    RUN/checkpoints/       best.ckpt (best validation kappa, weights only) and last.ckpt
                           (the full training state, for --resume; the one before it is
                           kept as last.previous.ckpt)
    RUN/metrics.json       the test split's metrics (`drgrade evaluate`), predictions.csv
    RUN/evaluations/NAME/  the same for each other dataset the run was evaluated on
"""

from __future__ import annotations

import json
import platform
import shlex
import sys
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import yaml

from drgrade.atomic import write_text

CONFIG_FILE = "config.yaml"
ENVIRONMENT_FILE = "environment.json"
LOG_FILE = "log.csv"
CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT = "best.ckpt"
LAST_CHECKPOINT = "last.ckpt"
PREVIOUS_CHECKPOINT = "last.previous.ckpt"  # the state last.ckpt replaced, kept for --resume
METRICS_FILE = "metrics.json"  # written by `drgrade evaluate` (the run's test metrics)
PREDICTIONS_FILE = "predictions.csv"  # one row per scored image, beside metrics.json
EVALUATIONS_DIR = "evaluations"  # RUN/evaluations/NAME: the run scored on other datasets
PLAN_FILE = "experiment.yaml"  # an experiment folder's plan: its cells, one run folder each


def last_checkpoint(run: Path) -> Path:
    """Where the latest state of a run is kept (what --resume continues from)."""
    return Path(run) / CHECKPOINT_DIR / LAST_CHECKPOINT


def previous_checkpoint(run: Path) -> Path:
    """The training state saved before the latest (a fallback if last.ckpt is unreadable)."""
    return Path(run) / CHECKPOINT_DIR / PREVIOUS_CHECKPOINT


def best_checkpoint(run: Path) -> Path:
    """The checkpoint of the epoch with the best validation kappa."""
    return Path(run) / CHECKPOINT_DIR / BEST_CHECKPOINT


def resolve_checkpoint(run_or_checkpoint: Path) -> Path:
    """A checkpoint file, or a run folder's best checkpoint."""
    path = Path(run_or_checkpoint)
    return best_checkpoint(path) if path.is_dir() else path


def run_of(checkpoint: Path) -> Path:
    """The run folder a checkpoint lives in (RUN/checkpoints/FILE)."""
    return Path(checkpoint).parent.parent


def epochs_logged(run: Path) -> int:
    """How many epochs the run's log.csv holds (0 before the first)."""
    log = Path(run) / LOG_FILE
    return len(pd.read_csv(log)) if log.is_file() else 0


def chosen_epoch(run: Path) -> tuple[int, float] | None:
    """(epoch, counted from 1, and its validation kappa) of the epoch best.ckpt holds: the
    first with the highest validation kappa; None before the first epoch."""
    log = Path(run) / LOG_FILE
    if not log.is_file():
        return None
    kappa = pd.read_csv(log).set_index("epoch")["val_kappa"]
    return int(kappa.idxmax()) + 1, float(kappa.max())


def stopped_early(run: Path) -> dict | None:
    """{'epoch', 'reason'} when early stopping ended the run, else None."""
    env_file = Path(run) / ENVIRONMENT_FILE
    return json.loads(env_file.read_text()).get("stopped_early") if env_file.is_file() else None


def record_early_stop(run: Path, epoch: int, reason: str) -> None:
    """Note in environment.json that early stopping ended the run after `epoch` (0-based)."""
    env_file = Path(run) / ENVIRONMENT_FILE
    env = json.loads(env_file.read_text())
    env["stopped_early"] = {"epoch": epoch, "reason": reason}
    write_text(env_file, json.dumps(env, indent=2) + "\n")


def run_state(run: Path, epochs: int) -> str:
    """'done' (trained and evaluated), 'trained', 'interrupted' or 'new'.

    A run that early stopping ended counts as trained, however few epochs it logged.
    """
    if epochs_logged(run) >= epochs or stopped_early(run):
        return "done" if (Path(run) / METRICS_FILE).is_file() else "trained"
    return "interrupted" if last_checkpoint(run).is_file() else "new"


def _program() -> list[str]:
    """argv[0] as typed: `python -m drgrade` would otherwise show as .../__main__.py."""
    if Path(sys.argv[0]).name == "__main__.py":
        return [Path(sys.executable).name, "-m", "drgrade"]
    return sys.argv[:1]


def write_run_files(run: Path, config: dict, data_fingerprint: str, resume: bool = False) -> None:
    """Save the resolved config and the environment into the run folder; a resume adds its
    command to the first one's instead of replacing it."""
    import torch  # here, not at the top: report and serve read run folders without torch

    run.mkdir(parents=True, exist_ok=True)
    write_text(run / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))
    command = shlex.join(_program() + sys.argv[1:])
    env_file = run / ENVIRONMENT_FILE
    if resume and env_file.is_file():
        env = json.loads(env_file.read_text())
        env["resumed"] = [*env.get("resumed", []), command]
        # The resumed run trains on; it is noted again if early stopping ends it again.
        env.pop("stopped_early", None)
        write_text(env_file, json.dumps(env, indent=2) + "\n")
        return
    env = {
        "command": command,
        "data_fingerprint": data_fingerprint,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        **{name: version(name) for name in ("drgrade", "torch", "torchvision", "lightning",
                                            "torchmetrics")},
    }
    write_text(env_file, json.dumps(env, indent=2) + "\n")


def read_run_config(run: Path) -> dict:
    """The resolved config a run was started with."""
    return yaml.safe_load((Path(run) / CONFIG_FILE).read_text())
