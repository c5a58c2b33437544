"""Heat maps: where in the photograph the network found the evidence for its grade.

Grad-CAM (or Grad-CAM++) from the `grad-cam` package, on the deepest convolutional feature
map that still has spatial extent (for a timm vision transformer: its last block's patch
tokens, laid out as a map), for the predicted grade's logit (classification) or for the
score (regression). Each map is drawn over the network's own input: the preprocessed
photograph, beside it unmarked.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torchvision.models import SwinTransformer, VisionTransformer

from drgrade.atomic import atomic_write
from drgrade.errors import DrgradeError
from drgrade.grades import GRADE_NAMES
from drgrade.inference.grader import HEAT_MAP_METHODS, Batch, GraderBase, Prediction
from drgrade.inference.torch_grader import TorchGrader
from drgrade.network import GradingNetwork

# The grad-cam class of each of HEAT_MAP_METHODS.
CAM_METHODS = dict(zip(HEAT_MAP_METHODS, (GradCAM, GradCAMPlusPlus), strict=True))
MIN_PANEL = 256  # small inputs (RetinaMNIST's 28 px) are enlarged so that they can be seen
CAPTION_HEIGHT = 24


class TokensToMap:
    """A vision transformer's (N, tokens, C) output as an (N, C, H, W) map of its patches."""

    def __init__(self, prefix_tokens: int):
        self.prefix_tokens = prefix_tokens  # class (and register) tokens: not image positions

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, self.prefix_tokens:]
        side = math.isqrt(patches.shape[1])  # network inputs are square
        return patches.reshape(len(patches), side, side, -1).permute(0, 3, 1, 2)


def _is_timm_vit(model: nn.Module) -> bool:
    # Duck-typed, so timm's ViT, DeiT, EVA and the like qualify without importing timm here.
    blocks = getattr(model, "blocks", None)
    return (hasattr(model, "num_prefix_tokens")
            and isinstance(blocks, nn.Sequential | nn.ModuleList)
            and len(blocks) > 0 and hasattr(blocks[-1], "norm1"))


def reshape_transform(model: nn.Module) -> TokensToMap | None:
    """What turns the target layer's output into a map: None for convolutional networks."""
    return TokensToMap(model.num_prefix_tokens) if _is_timm_vit(model) else None


def target_layer(model: nn.Module, image_size: int) -> nn.Module:
    """The module Grad-CAM looks at: the deepest convolutional block with a spatial map.

    That is the last module, in forward order, that holds a convolution and outputs an
    (N, C, H, W) map of more than one position: a ResNet's layer4 (layer3 when layer4 is 1x1).
    A timm vision transformer's is its last block's first norm (tokens; see TokensToMap).
    """
    if _is_timm_vit(model):
        return model.blocks[-1].norm1
    # timm's Swin and the like say so: their maps are channels-last (N, H, W, C).
    channels_last_maps = str(getattr(model, "output_fmt", "NCHW")) != "NCHW"
    if isinstance(model, (VisionTransformer, SwinTransformer)) or channels_last_maps:
        # Their feature maps are tokens or channels-last: Grad-CAM would misread them.
        raise DrgradeError(f"heat maps (--explain) need a convolutional network, not "
                           f"{type(model).__name__}: use e.g. resnet18 or resnet50, or a timm "
                           "vision transformer (timm/vit_small_patch16_224)")
    convolutional = [m for m in model.modules()
                     if any(isinstance(c, nn.Conv2d) for c in m.modules())]
    found: list[nn.Module] = []

    def spatial(module: nn.Module, _inputs, output) -> None:
        if isinstance(output, torch.Tensor) and output.ndim == 4 and output[0, 0].numel() > 1:
            found.append(module)

    handles = [m.register_forward_hook(spatial) for m in convolutional]
    training = model.training
    try:
        # Eval mode: a probe must not move batch-norm statistics (nor fail on a 1x1 map).
        with torch.no_grad():
            device = next(model.parameters()).device
            model.eval()(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    if not found:
        raise DrgradeError(f"heat maps (--explain): {type(model).__name__} has no convolutional "
                           f"feature map at {image_size} px")
    return found[-1]


def cam_method(name: str) -> type:
    """The grad-cam class of a method name."""
    if name not in CAM_METHODS:
        raise DrgradeError(f"unknown heat map method {name!r} (--explain-method): choose one "
                           f"of {', '.join(CAM_METHODS)}")
    return CAM_METHODS[name]


class ScoreTarget:
    """The regression score itself as the quantity to explain."""

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output


class FellowsHeld(nn.Module):
    """A binocular network with its fellow eyes' features held fixed, as Grad-CAM needs it:
    one input, and the backbone's target layer run on the explained images alone (a forward
    with the fellows would run it on both eyes in one batch)."""

    def __init__(self, network: GradingNetwork, fellows: torch.Tensor):
        super().__init__()
        self.network = network
        with torch.no_grad():
            self.fellow_features = network.features(fellows)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network.pair_outputs(self.network.features(images), self.fellow_features)


def heat_maps(grader: TorchGrader, inputs: np.ndarray, grades: Sequence[int],
              method: str = "gradcam", layer: nn.Module | None = None,
              fellows: np.ndarray | None = None) -> np.ndarray:
    """(N, H, W) maps in [0, 1] of the evidence for `grades` (the score, for regression).

    A binocular model's map is of the evidence in each image with its fellow eye (`fellows`;
    None: the image itself, as it was graded) held fixed.
    """
    layer = layer or target_layer(grader.network.model, grader.card.image_size)
    targets = ([ScoreTarget() for _ in grades] if grader.is_regression
               else [ClassifierOutputTarget(g) for g in grades])
    reshape = reshape_transform(grader.network.model)
    network = grader.network
    if grader.card.binocular:
        network = FellowsHeld(network, grader.tensor(inputs if fellows is None else fellows))
    with (torch.enable_grad(),
          cam_method(method)(network, [layer], reshape_transform=reshape) as cam):
        maps = cam(input_tensor=grader.tensor(inputs), targets=targets)
    grader.network.zero_grad(set_to_none=True)  # the parameter gradients were only a means
    return maps


def network_view(grader: GraderBase, inputs: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) RGB in [0, 1]: network inputs with the normalisation undone."""
    mean = np.asarray(grader.card.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(grader.card.std, np.float32).reshape(1, 3, 1, 1)
    pixels = np.asarray(inputs, np.float32) * std + mean
    return pixels.clip(0, 1).transpose(0, 2, 3, 1)


def caption(prediction: Prediction, method: str = "gradcam") -> str:
    """What a heat map shows: the image, its grade and the explained output."""
    name = Path(prediction.image).name
    grade = f"grade {prediction.grade} ({GRADE_NAMES[prediction.grade]})"
    if prediction.score is not None:
        return f"{name}: {grade}, {HEAT_MAP_METHODS[method]} of the score {prediction.score:.2f}"
    probability = prediction.probabilities[prediction.grade]
    return f"{name}: {grade}, p = {probability:.2f}, {HEAT_MAP_METHODS[method]}"


def render(photo: np.ndarray, heat_map: np.ndarray, text: str) -> Image.Image:
    """The photograph beside it with the heat map over it, under a caption line."""
    overlay = show_cam_on_image(photo.astype(np.float32), heat_map, use_rgb=True,
                                image_weight=0.55)
    plain = np.rint(photo * 255).astype(np.uint8)
    scale = max(1, -(-MIN_PANEL // photo.shape[0]))  # whole factors keep the pixels honest
    panels = [Image.fromarray(a).resize((a.shape[1] * scale, a.shape[0] * scale),
                                        Image.Resampling.NEAREST) for a in (plain, overlay)]
    width, height = panels[0].size
    sheet = Image.new("RGB", (2 * width + 4, height + CAPTION_HEIGHT), "white")
    sheet.paste(panels[0], (0, CAPTION_HEIGHT))
    sheet.paste(panels[1], (width + 4, CAPTION_HEIGHT))
    ImageDraw.Draw(sheet).text((4, 4), text, fill="black", font=ImageFont.load_default(14))
    return sheet


def heat_map_sheets(grader: TorchGrader, inputs: np.ndarray, predictions: Sequence[Prediction],
                    method: str = "gradcam", layer: nn.Module | None = None,
                    fellows: np.ndarray | None = None) -> list[Image.Image]:
    """One sheet per graded input: the photograph beside its heat map, under a caption."""
    maps = heat_maps(grader, inputs, [p.grade for p in predictions], method, layer, fellows)
    photos = network_view(grader, inputs)
    return [render(photo, heat_map, caption(prediction, method))
            for prediction, photo, heat_map in zip(predictions, photos, maps, strict=True)]


class HeatMapWriter:
    """Writes FOLDER/<image stem>.png for each graded image of a batch."""

    def __init__(self, grader: GraderBase, folder: Path, method: str = "gradcam"):
        if not grader.supports_heat_maps:
            raise DrgradeError("--explain needs the PyTorch checkpoint (heat maps need "
                               "gradients): give the run folder or .ckpt, not the .onnx file")
        cam_method(method)  # a wrong name fails before any image is graded
        self.grader = grader
        self.folder = folder
        self.method = method
        self.layer = target_layer(grader.network.model, grader.card.image_size)
        self.stems: Counter = Counter()
        folder.mkdir(parents=True, exist_ok=True)

    def continue_after(self, images: Iterable[str]) -> None:
        """Count the heat maps an interrupted run already wrote, for `images`, so that the
        rest are named as in a run that was never interrupted."""
        self.stems.update(Path(image).stem for image in images)

    def _target(self, image: str) -> Path:
        stem = Path(image).stem
        self.stems[stem] += 1
        # Same-named photographs from different folders must not overwrite each other.
        suffix = f"-{self.stems[stem]}" if self.stems[stem] > 1 else ""
        return self.folder / f"{stem}{suffix}.png"

    def write(self, batch: Batch) -> dict[int, str]:
        """Heat maps of the batch's graded images; their paths by position in the batch."""
        if batch.inputs is None:
            return {}
        graded = [batch.predictions[k] for k in batch.graded]
        sheets = heat_map_sheets(self.grader, batch.inputs, graded, self.method, self.layer,
                                 batch.fellows)
        written = {}
        for k, prediction, sheet in zip(batch.graded, graded, sheets, strict=True):
            target = self._target(prediction.image)
            with atomic_write(target, "wb") as handle:
                sheet.save(handle, format="PNG")
            written[k] = str(target)
        return written
