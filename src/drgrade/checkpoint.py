"""The one safe loader of drgrade checkpoints: model card + weights, never code.

Reads both the current format (a `drgrade_model_card` entry beside Lightning's state) and
checkpoints written before model cards existed. Imports torch, never Lightning nor the
training code, so inference and evaluation load models without them.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from drgrade.errors import DrgradeError
from drgrade.model_card import CHECKPOINT_KEY, ModelCard, card_from_legacy
from drgrade.network import GradingNetwork

# The LightningModule keeps the network under this attribute; its state_dict keys carry it.
NETWORK_PREFIX = "network."


def read_checkpoint(path: Path | str) -> dict:
    """The raw contents of a checkpoint file, loaded with weights_only=True whatever the
    environment says (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot turn it off here)."""
    path = Path(path)
    if not path.is_file():
        raise DrgradeError(f"{path}: checkpoint not found")
    if path.suffix.lower() == ".onnx":
        raise DrgradeError(f"{path}: an ONNX model, not a checkpoint; this command needs the "
                           "run folder or its .ckpt (predict and serve take the .onnx file)")
    if not zipfile.is_zipfile(path):
        # torch.save has written zip archives since torch 1.6; anything else (a truncated
        # copy, random bytes, a legacy pickle) is not a checkpoint drgrade wrote.
        raise DrgradeError(f"{path}: not a loadable checkpoint (not a complete torch.save zip "
                           "archive: truncated, or another kind of file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # Not torch's message: it advises weights_only=False, which would run the file's code.
        raise DrgradeError(
            f"{path}: refused: it holds Python objects besides tensors and plain values, "
            f"and loading those could run code from the file ({_refusal(error)}); use a "
            "checkpoint written by `drgrade train`"
        ) from None
    except Exception as error:  # torch raises many types for corrupt, truncated or alien files
        first_line = next(iter(str(error).splitlines()), "")
        raise DrgradeError(f"{path}: not a loadable checkpoint "
                           f"({type(error).__name__}: {first_line})") from None
    if not isinstance(state, dict):
        raise DrgradeError(f"{path}: holds a {type(state).__name__}, not a drgrade checkpoint")
    return state


def network_state(state: dict) -> dict[str, torch.Tensor]:
    """The grading network's state_dict inside a checkpoint (either format)."""
    weights = state.get("state_dict") or {}
    if any(key.startswith(NETWORK_PREFIX) for key in weights):
        return {key.removeprefix(NETWORK_PREFIX): value for key, value in weights.items()
                if key.startswith(NETWORK_PREFIX)}
    return dict(weights)  # before model cards the module held the network's parts itself


def model_card(state: dict, source: str) -> ModelCard:
    """The checkpoint's model card (converted from the old metadata if it predates cards)."""
    written_by = str(state.get("drgrade_version", "unknown"))
    if CHECKPOINT_KEY in state:
        return ModelCard.from_dict(state[CHECKPOINT_KEY], source)
    hparams = state.get("hyper_parameters")
    if not isinstance(hparams, Mapping):
        raise DrgradeError(f"{source}: no drgrade metadata (model card); a plain state_dict "
                           "cannot say how to feed the model: use a checkpoint written by "
                           "`drgrade train`")
    cut_points = network_state(state).get("thresholds")
    cut_points = cut_points.tolist() if cut_points is not None else ModelCard.cut_points
    return card_from_legacy(dict(hparams), cut_points, written_by, source)


def load_network(path: Path | str) -> tuple[GradingNetwork, ModelCard]:
    """The trained network of a checkpoint, in eval mode, with its model card."""
    state = read_checkpoint(path)
    card = model_card(state, str(path))
    network = GradingNetwork.from_card(card)
    try:
        network.load_state_dict(network_state(state))
    except RuntimeError as error:
        raise DrgradeError(
            f"{path}: its weights do not fit the {card.arch} {card.head} model its card "
            f"describes ({str(error).splitlines()[0]} ...); was it edited or written by "
            "another drgrade version?"
        ) from None
    return network.eval(), card


def _refusal(error: pickle.UnpicklingError) -> str:
    """The line of torch's weights-only refusal that names what was refused."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(error).splitlines()]
    reasons = [line for line in lines if line and not line.startswith(boilerplate)]
    return reasons[0] if reasons else "objects other than tensors"
