"""A grader running a drgrade checkpoint in PyTorch (the path heat maps need)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from drgrade.checkpoint import load_network
from drgrade.inference.grader import GraderBase
from drgrade.model_card import ModelCard
from drgrade.network import GradingNetwork
from drgrade.run_folder import resolve_checkpoint


class TorchGrader(GraderBase):
    """Grades raw photographs exactly as the model's training data was prepared.

    The checkpoint's model card records the `drgrade prepare` settings (fundus crop, size,
    Ben Graham enhancement) and the network input (size, normalisation); nothing is left to
    the user.
    """

    supports_heat_maps = True

    def __init__(self, network: GradingNetwork, card: ModelCard, device: str | None = None):
        super().__init__(card)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.network = network.eval().to(self.device)

    @classmethod
    def from_checkpoint(cls, checkpoint: Path | str, device: str | None = None) -> TorchGrader:
        """A grader from a drgrade checkpoint (or a run folder: its best checkpoint)."""
        network, card = load_network(resolve_checkpoint(Path(checkpoint)))
        return cls(network, card, device)

    def tensor(self, batch: np.ndarray) -> torch.Tensor:
        """A numpy batch as a tensor on the grader's device."""
        return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)

    @torch.no_grad()
    def probabilities(self, batch: np.ndarray, fellows: np.ndarray | None = None) -> np.ndarray:
        fellow_tensor = None if fellows is None else self.tensor(fellows)
        outputs = self.network.probabilities(self.network(self.tensor(batch), fellow_tensor))
        return outputs.float().cpu().numpy()
