"""The run folder: everything needed to trace a number back to the command that made it.

    RUN/config.yaml        resolved config (every option, defaults included)
    RUN/environment.json   versions, device, data fingerprint, command line
    RUN/log.csv            one row per epoch: losses, accuracy, kappa, learning rate
    RUN/checkpoints/       best.ckpt (best validation kappa, weights only) and last.ckpt
                           (the full training state, for --resume)
"""

from __future__ import annotations

import json
import platform
import shlex
import sys
from importlib.metadata import version
from pathlib import Path

import torch
import yaml

CONFIG_FILE = "config.yaml"
ENVIRONMENT_FILE = "environment.json"
LOG_FILE = "log.csv"
CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT = "best.ckpt"
LAST_CHECKPOINT = "last.ckpt"


def last_checkpoint(run: Path) -> Path:
    """Where the latest state of a run is kept (what --resume continues from)."""
    return Path(run) / CHECKPOINT_DIR / LAST_CHECKPOINT


def best_checkpoint(run: Path) -> Path:
    """The checkpoint of the epoch with the best validation kappa."""
    return Path(run) / CHECKPOINT_DIR / BEST_CHECKPOINT


def _program() -> list[str]:
    """argv[0] as typed: `python -m drgrade` would otherwise show as .../__main__.py."""
    if Path(sys.argv[0]).name == "__main__.py":
        return [Path(sys.executable).name, "-m", "drgrade"]
    return sys.argv[:1]


def write_run_files(run: Path, config: dict, data_fingerprint: str) -> None:
    """Save the resolved config and the environment into the run folder."""
    run.mkdir(parents=True, exist_ok=True)
    (run / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    env = {
        "command": shlex.join(_program() + sys.argv[1:]),
        "data_fingerprint": data_fingerprint,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        **{name: version(name) for name in ("drgrade", "torch", "torchvision", "lightning",
                                            "torchmetrics")},
    }
    (run / ENVIRONMENT_FILE).write_text(json.dumps(env, indent=2) + "\n")


def read_run_config(run: Path) -> dict:
    """The resolved config a run was started with."""
    return yaml.safe_load((Path(run) / CONFIG_FILE).read_text())
