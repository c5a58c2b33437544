"""The training transform (after torchvision's references/presets); the eval transform, shared
with inference, is `drgrade.preprocessing.EvalTransform`."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from drgrade.config import TrainConfig

# The lab scaled pixels to [-1, 1]; pretrained torchvision models expect ImageNet statistics.
LAB_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def normalization_stats(config: TrainConfig) -> tuple[tuple, tuple]:
    """(mean, std) the config asks for; auto means ImageNet's when starting pretrained."""
    imagenet = config.normalization == "imagenet" or (
        config.normalization == "auto" and (config.pretrained or config.weights)
    )
    return IMAGENET_STATS if imagenet else LAB_STATS


def _to_normalized_tensor(mean, std) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def train_transform(config: TrainConfig) -> v2.Compose:
    """Resize (or random resized crop), the configured random augmentation, normalisation."""
    size = (config.image_size, config.image_size)
    steps: list = [
        v2.RandomResizedCrop(size, scale=(config.crop_scale, 1.0), antialias=True)
        if config.crop_scale < 1 else v2.Resize(size, antialias=True)
    ]
    if config.flips:
        steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    if config.rotation:
        steps.append(v2.RandomRotation(config.rotation))
    if config.color_jitter:
        j = config.color_jitter
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
    return v2.Compose(steps + _to_normalized_tensor(*normalization_stats(config)))
