"""The grading network: a backbone with its grading head and the regression cut points.

A plain `nn.Module` used alike by training (wrapped by the LightningModule) and inference
(built from a model card). `forward` always gives raw outputs; `probabilities` and
`decode` say what they mean.
"""

from __future__ import annotations

import torch
from torch import nn

from drgrade.grades import NUM_GRADES, REFERABLE_GRADE
from drgrade.model_card import ModelCard
from drgrade.models import build_backbone, build_model, head_outputs
from drgrade.operating_points import DEFAULT_CUT_POINTS


class GradingNetwork(nn.Module):
    """Backbone + head (5 logits or 1 score) + cut points (a buffer, saved with the weights)."""

    def __init__(self, arch: str, head: str, pretrained: bool = False,
                 weights_file: str | None = None, channels_last: bool = True,
                 image_size: int | None = None, binocular: bool = False):
        super().__init__()
        self.head = head
        self.channels_last = channels_last
        self.binocular = binocular
        # image_size shapes fixed-size models (timm ViTs' position embeddings): training and
        # inference must pass the card's, or the checkpoint would not fit.
        if binocular:
            # The backbone gives pooled features; one head reads [own, fellow eye's].
            self.model, width = build_backbone(arch, pretrained=pretrained,
                                               weights_file=weights_file, image_size=image_size)
            self.pair_head = nn.Linear(2 * width, head_outputs(head))
        else:
            self.model = build_model(arch, pretrained=pretrained, head=head,
                                     weights_file=weights_file, image_size=image_size)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.register_buffer("thresholds", torch.tensor(DEFAULT_CUT_POINTS))

    @classmethod
    def from_card(cls, card: ModelCard) -> GradingNetwork:
        """The untrained network a card describes (its weights come from the checkpoint)."""
        return cls(card.arch, card.head, image_size=card.image_size, binocular=card.binocular)

    @property
    def is_regression(self) -> bool:
        return self.head == "regression"

    def forward(self, images: torch.Tensor, fellows: torch.Tensor | None = None) -> torch.Tensor:
        """Raw outputs: logits (N, 5) or regression scores (N,).

        `fellows` (binocular networks only): each image's fellow eye; None grades each eye
        with itself as its fellow, as for an eye without one.
        """
        if not self.binocular:
            if fellows is not None:
                raise ValueError("fellow eyes given to a single-eye network")
            out = self.features(images)
            return out.squeeze(1) if self.is_regression else out
        if fellows is None:
            own = fellow = self.features(images)
        else:
            # One backbone pass over both: fewer calls, and batch norm sees both eyes.
            # Sliced, not chunked: chunk(2) would fix the exported batch axis at 2.
            features = self.features(torch.cat([images, fellows]))
            own, fellow = features[:images.shape[0]], features[images.shape[0]:]
        return self.pair_outputs(own, fellow)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's output: pooled features (binocular) or the outputs themselves."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model(images)

    def pair_outputs(self, own: torch.Tensor, fellow: torch.Tensor) -> torch.Tensor:
        """A binocular network's raw outputs from each eye's and its fellow's features."""
        out = self.pair_head(torch.cat([own, fellow], dim=1))
        return out.squeeze(1) if self.is_regression else out

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        """Per-grade probabilities (classification) or the score itself (regression)."""
        return outputs if self.is_regression else outputs.softmax(dim=1)

    def decode(self, outputs: torch.Tensor) -> torch.Tensor:
        """Grades 0-4 from raw outputs or probabilities."""
        if self.is_regression:
            return decode_regression(outputs, self.thresholds)
        return outputs.argmax(dim=1)

    def referable_score(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Grows with the chance of referable DR: P(grade >= 2), or the regression score."""
        return probabilities if self.is_regression else probabilities[:, REFERABLE_GRADE:].sum(1)


def decode_regression(scores: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Grades 0-4 (int64) from regression scores: grade = number of cut points below the score.

    The torch twin of `operating_points.decode_scores`, for batches on the GPU while
    training. A score equal to a cut point takes the lower grade (torch.bucketize, right=False).
    """
    if thresholds.ndim != 1 or len(thresholds) != NUM_GRADES - 1:
        shape = tuple(thresholds.shape)
        raise ValueError(f"expected {NUM_GRADES - 1} cut points, got shape {shape}")
    # Checked only on the CPU: on a GPU the check would stall every batch for a sync.
    if thresholds.device.type == "cpu" and not bool((thresholds.diff() > 0).all()):
        raise ValueError(f"cut points must increase strictly, got {thresholds.tolist()}")
    # Compare in the wider dtype: half-precision scores against float32 cut points.
    dtype = torch.promote_types(scores.dtype, thresholds.dtype)
    return torch.bucketize(scores.to(dtype), thresholds.to(device=scores.device, dtype=dtype))
