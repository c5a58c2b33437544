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


def _with_probability(step: v2.Transform, p: float) -> v2.Transform:
    """`step` applied with probability `p`; at p = 1 bare, as RandomApply would draw a number
    and so shift every later random draw of the seeded transform."""
    return step if p >= 1 else v2.RandomApply([step], p=p)


def train_transform(config: TrainConfig) -> v2.Compose:
    """Resize (or random resized crop), the configured random augmentation, normalisation.

    New operations are added only when configured, so the defaults draw exactly the random
    numbers (per seed, epoch and image) that earlier runs drew, and resume stays exact.
    """
    size = (config.image_size, config.image_size)
    resize = v2.Resize(size, antialias=True)
    steps: list = [resize]
    if config.crop_scale < 1:
        crop = v2.RandomResizedCrop(size, scale=(config.crop_scale, 1.0),
                                    ratio=config.crop_ratio, antialias=True)
        # A skipped crop still needs the resize.
        steps = [crop] if config.crop_p >= 1 else [_with_probability(crop, config.crop_p), resize]
    if config.flips:
        steps += [v2.RandomHorizontalFlip(config.flip_p), v2.RandomVerticalFlip(config.flip_p)]
    if config.rotation:
        steps.append(_with_probability(v2.RandomRotation(config.rotation), config.rotation_p))
    if config.translate or config.scale_range:
        shift = (config.translate, config.translate) if config.translate else None
        affine = v2.RandomAffine(degrees=0, translate=shift, scale=config.scale_range)
        steps.append(_with_probability(affine, config.affine_p))
    jitter = {name: config.color_jitter if value is None else value
              for name, value in (("brightness", config.brightness),
                                  ("contrast", config.contrast),
                                  ("saturation", config.saturation))}
    if any(jitter.values()) or config.hue:
        colour = v2.ColorJitter(**jitter, hue=config.hue)
        steps.append(_with_probability(colour, config.jitter_p))
    if config.grayscale_p:
        steps.append(v2.RandomGrayscale(config.grayscale_p))
    if config.blur_p:
        blur = v2.GaussianBlur(config.blur_kernel, sigma=config.blur_sigma)
        steps.append(_with_probability(blur, config.blur_p))
    return v2.Compose(steps + _to_normalized_tensor(*normalization_stats(config)))
