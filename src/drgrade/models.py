"""Models: torchvision or timm backbones with a DR grading head, pretrained weights.

`build_model` takes any torchvision classification model by name (resnet18 and resnet50 are
the lab's) or any timm model as `timm/<name>` (timm/efficientnet_b0, timm/convnext_tiny,
timm/vit_small_patch16_224, ...), optionally loads pretrained weights (torchvision's hub
cache or the Hugging Face hub cache, or a local file), and gives it a grading head:

- classification: 5 logits, one per grade, decoded by argmax;
- regression: 1 score on the 0-4 scale, decoded by 4 cut points fitted on validation
  (`operating_points.fit_cut_points`).

Weight files are read with `torch.load(..., weights_only=True)`: loading never runs code.
"""

from __future__ import annotations

import difflib
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.client import HTTPException
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
import torchvision
from huggingface_hub import constants as hub_constants
from huggingface_hub import hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
from safetensors.torch import load_file as load_safetensors
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models

from drgrade.errors import DrgradeError
from drgrade.grades import NUM_GRADES
from drgrade.model_card import HEADS

# Class count of the standard torchvision models: their ImageNet state_dicts have this head.
IMAGENET_CLASSES = 1000
# Bounds each connect/read of the weights download; without it a firewalled machine that
# drops packets hangs for minutes before the OS gives up.
NETWORK_TIMEOUT_S = 30.0
LAB_ARCHS = ("resnet18", "resnet50")
FEATURES = 0  # outputs of a backbone without its classifier: it gives its pooled features
TIMM_PREFIX = "timm/"  # `--arch timm/<name>`: a timm model instead of a torchvision one


# ----------------------------------------------------------------------------- heads


def head_outputs(head: str) -> int:
    """Number of outputs of a head: 5 logits (classification) or 1 score (regression)."""
    if head == "classification":
        return NUM_GRADES
    if head == "regression":
        return 1
    raise DrgradeError(f"unknown head {head!r} (option --head): choose one of {', '.join(HEADS)}")


# ----------------------------------------------------------------------------- architectures


def classification_archs() -> list[str]:
    """Names of torchvision's classification models (no detection/segmentation/video ones)."""
    return list_models(module=torchvision.models)


def _check_arch(arch: str) -> None:
    names = classification_archs()
    if arch in names:
        return
    close = difflib.get_close_matches(arch.lower(), names, n=5, cutoff=0.6)
    if timm.is_model(arch):
        hint = f"timm's {arch} is {TIMM_PREFIX}{arch}."
    elif close:
        hint = f"did you mean {', '.join(close)}?"
    else:
        hint = f"the lab uses {', '.join(LAB_ARCHS)}."
    raise DrgradeError(
        f"unknown model architecture {arch!r} (option --arch): {hint} Any of torchvision's "
        f"{len(names)} classification models works: {', '.join(names[:6])}, ..., and any "
        f"timm model as {TIMM_PREFIX}<name>"
    )


def _standard_kwargs(arch: str, loads_weights: bool) -> dict:
    """Builder options that torchvision sets with an arch's DEFAULT ImageNet weights.

    Applied whatever the weights, so a model trained from ImageNet and one rebuilt from a
    checkpoint without them (which is how inference builds it) are the same network: these
    settings are not in the state_dict, so a checkpoint cannot restore them.
    """
    meta = get_model_weights(arch).DEFAULT.meta
    kwargs: dict = {}
    if arch in ("googlenet", "inception_v3"):
        # Their ImageNet weights expect inputs re-normalised inside the network.
        kwargs["transform_input"] = True
        # Explicit, which silences torchvision's FutureWarning; loaded weights need no init.
        kwargs["init_weights"] = not loads_weights
    elif arch.startswith("vit_"):
        # ViTs take one input size; vit_h_14's DEFAULT (SWAG) weights are for 518 px.
        kwargs["image_size"] = meta["min_size"][0]
    elif arch.startswith("maxvit_"):
        kwargs["input_size"] = meta["min_size"]
    return kwargs


def expected_weights_file(arch: str) -> Path:
    """Where torchvision's hub cache keeps the arch's DEFAULT ImageNet weights (may not exist)."""
    _check_arch(arch)
    url = get_model_weights(arch).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


# ----------------------------------------------------------------------------- weights


_SAVE_HINT = "save one with torch.save(model.state_dict(), FILE)"


def _load_state_dict_file(
    path: Path, what: str, fix: str = _SAVE_HINT
) -> Mapping[str, torch.Tensor]:
    """A state_dict read from a file (PyTorch or .safetensors) without running code from it."""
    if not path.is_file():
        raise DrgradeError(f"{what} {path} does not exist (or is not a file)")
    try:
        # The Hugging Face hub keeps timm's weights as .safetensors: plain tensors, no pickle.
        state = (load_safetensors(path) if path.suffix == ".safetensors"
                 else torch.load(path, map_location="cpu", weights_only=True))
    except Exception as err:  # corrupt, truncated, not a torch file, or pickled objects
        raise DrgradeError(
            f"{what} {path} cannot be read as a PyTorch state_dict (files holding pickled "
            f"objects are refused): {err}. Fix: {fix}"
        ) from err
    _check_is_state_dict(state, path, what, fix)
    return state


def _check_is_state_dict(state: object, path: Path, what: str, fix: str) -> None:
    if isinstance(state, Mapping) and state and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        return
    if isinstance(state, Mapping):
        keys = [str(k) for k in list(state)[:8]]
        found = f"a dict with keys {keys}" if keys else "an empty dict"
    else:
        found = f"a {type(state).__name__}"
    raise DrgradeError(
        f"{what} {path} holds {found}, not a state_dict (parameter names -> tensors). Fix: {fix}"
    )


def _check_matches(
    model: nn.Module, state: Mapping[str, torch.Tensor], arch: str, source: str,
    classes: int = IMAGENET_CLASSES,
) -> None:
    """Raise naming the first mismatching keys when `state` does not fit `model`."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} (model: {tuple(expected[k].shape)})"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or wrong_shape):
        return
    lines = [f"{source} does not match {arch} (option --arch)"]
    for label, keys in (("missing", missing), ("unexpected", unexpected),
                        ("wrong shape", wrong_shape)):
        if keys:
            more = f", ... ({len(keys)} in all)" if len(keys) > 5 else ""
            lines.append(f"  {label}: {', '.join(keys[:5])}{more}")
    if unexpected and all(k.startswith("module.") for k in unexpected):
        lines.append("  the keys start with 'module.': strip that DataParallel/DDP prefix")
    lines.append(
        f"  expected the arch's standard {classes}-class state_dict, as saved by "
        "torch.save(model.state_dict(), FILE): check --arch and --weights"
    )
    raise DrgradeError("\n".join(lines))


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # torch.hub opens its URL without a timeout; the process-wide default is its only bound.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _pretrained_state_dict(arch: str) -> Mapping[str, torch.Tensor]:
    """The arch's DEFAULT ImageNet state_dict: the hub cache file, else a hash-checked download."""
    cached = expected_weights_file(arch)
    if cached.exists():
        # Read here rather than by torchvision, which would unpickle it with weights_only=False,
        # and users are told to place files here by hand.
        fix = "delete it so that it is downloaded again, or pass --weights FILE"
        return _load_state_dict_file(cached, f"cached ImageNet weights for {arch}", fix)
    weights = get_model_weights(arch).DEFAULT
    try:
        with _socket_timeout(NETWORK_TIMEOUT_S):
            return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except (OSError, HTTPException) as err:  # URLError, timeouts, refused/reset connections
        raise DrgradeError(
            f"cannot download the ImageNet weights for {arch} (--pretrained): {err}. Offline, "
            f"copy {weights.url} to {cached} (the torch hub cache; set TORCH_HOME to move it), "
            "or pass --weights FILE with that state_dict, or train without --pretrained."
        ) from err
    except Exception as err:  # failed hash check or unreadable download
        raise DrgradeError(
            f"the downloaded ImageNet weights for {arch} ({weights.url}) failed to verify or "
            f"load: {err}. Try again, or pass --weights FILE."
        ) from err


def _drop_aux_heads(model: nn.Module) -> None:
    # Inception v3 and GoogLeNet return (logits, aux logits) tuples in training mode; a
    # grading head is one tensor, so their auxiliary classifiers go.
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for name in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, name):
                setattr(model, name, None)


# ----------------------------------------------------------------------------- head swap


def _find_classifier(model: nn.Module, arch: str) -> tuple[str, nn.Linear | nn.Conv2d]:
    """Dotted name and module of the final classifier: the last Linear registered.

    Squeezenets have none: theirs is a 1x1 convolution.
    """
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    convs = [(n, m) for n, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    name, module = (linears or convs or [("", None)])[-1]
    outputs = getattr(module, "out_features", getattr(module, "out_channels", None))
    if module is None or outputs != IMAGENET_CLASSES:
        raise DrgradeError(
            f"cannot find the final {IMAGENET_CLASSES}-class classifier of {arch!r} (option "
            f"--arch): use another architecture, e.g. {', '.join(LAB_ARCHS)}"
        )
    return name, module


def _replace_classifier(model: nn.Module, arch: str, outputs: int) -> int:
    """Swap the final classifier for one with `outputs` (0: none, pooled features out); the
    width of the features it took."""
    name, old = _find_classifier(model, arch)
    if outputs == FEATURES:
        if not isinstance(old, nn.Linear):
            raise DrgradeError(
                f"eyes both (option --eyes) needs an architecture whose classifier is a "
                f"Linear layer over pooled features; {arch!r} ends in a "
                f"{type(old).__name__}: use --eyes single or another --arch, e.g. "
                f"{', '.join(LAB_ARCHS)}")
        new: nn.Module = nn.Identity()
    elif isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, outputs, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, outputs, kernel_size=1)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)
    return old.in_features if isinstance(old, nn.Linear) else old.in_channels


# ----------------------------------------------------------------------------- timm


# What timm's hub loader looks for in a model's Hugging Face repo, in its order.
HUB_WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")


def _check_timm_name(name: str) -> None:
    """Accept a timm model name, with or without a pretrained tag (resnet18.a1_in1k)."""
    names = timm.list_models() + timm.list_pretrained()
    if name in names:
        return
    close = difflib.get_close_matches(name.lower(), names, n=5, cutoff=0.6)
    hint = (f"did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close
            else "timm.list_models() lists them all.")
    raise DrgradeError(f"unknown timm model {TIMM_PREFIX + name!r} (option --arch): {hint}")


def _timm_size(name: str, image_size: int | None) -> dict:
    """img_size for timm models built for one input size (ViTs), so that any size works."""
    cfg = timm.models.get_pretrained_cfg(name)
    if image_size is None or cfg is None or not cfg.fixed_input_size:
        return {}
    return {"img_size": image_size}


def _timm_pretrained_state_dict(name: str) -> tuple[Mapping[str, torch.Tensor], str]:
    """timm's pretrained state_dict of a model from the Hugging Face hub cache, else the hub.

    Fetched here rather than by timm's `pretrained=True`, which on a machine without network
    retries for about 47 s before failing. The cache is read with no network at all; when
    the file is not there and the user has set HF_HUB_OFFLINE, the error comes at once;
    otherwise huggingface_hub downloads it (HF_HUB_ETAG_TIMEOUT and HF_HUB_DOWNLOAD_TIMEOUT
    bound each request; on a dead network its retries take about 25 s). The error names the
    hub repo and file, the cache and `--weights FILE`.
    """
    arch = TIMM_PREFIX + name
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        raise DrgradeError(f"timm has no pretrained weights for {arch} (--pretrained): choose "
                           "one in timm.list_pretrained(), pass --weights FILE, or train "
                           "without --pretrained")
    repo, _, revision = cfg.hf_hub_id.partition("@")
    files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HUB_WEIGHTS_FILES
    what = f"cached weights of {arch}"
    fix = "delete it so that it is downloaded again, or pass --weights FILE"
    for filename in files:
        cached = try_to_load_from_cache(repo, filename, revision=revision or None)
        if isinstance(cached, str):  # else None or a marker of a file known to be absent
            return _load_state_dict_file(Path(cached), what, fix), f"{what} {cached}"
    offline = (f"Offline, fetch https://huggingface.co/{repo}/resolve/main/{files[0]} on a "
               f"machine that is online and pass it as --weights FILE, or copy that machine's "
               f"Hugging Face hub cache (after `hf download {repo} {files[0]}`) to "
               f"{hub_constants.HF_HUB_CACHE} (set HF_HOME to move it), or train without "
               "--pretrained.")
    if hub_constants.HF_HUB_OFFLINE:
        raise DrgradeError(f"the pretrained weights of {arch} (--pretrained), {files[0]} of "
                           f"the Hugging Face hub repo {repo}, are not in the hub cache and "
                           f"HF_HUB_OFFLINE is set. {offline}")
    for filename in files:
        try:
            path = hf_hub_download(repo, filename, revision=revision or None)
        except LocalEntryNotFoundError as err:  # the hub is unreachable (a subclass: first)
            raise DrgradeError(f"cannot download the pretrained weights of {arch} "
                               f"(--pretrained) from the Hugging Face hub repo {repo}: {err} "
                               f"{offline} Set HF_HUB_OFFLINE=1 to skip the attempt.") from err
        except EntryNotFoundError:
            continue  # this repo keeps its weights under the other name
        return _load_state_dict_file(Path(path), what, fix), f"{what} {path}"
    raise DrgradeError(f"the Hugging Face hub repo {repo} has none of {', '.join(files)} "
                       f"(--pretrained {arch}): pass --weights FILE")


def _build_timm(arch: str, head: str | None, pretrained: bool, weights_file: str | Path | None,
                image_size: int | None) -> tuple[nn.Module, int]:
    """A timm model by name and its feature width; timm builds the grading head (its
    classifier) itself, or none when `head` is None."""
    name = arch.removeprefix(TIMM_PREFIX)
    _check_timm_name(name)
    outputs = head_outputs(head) if head else FEATURES
    size = _timm_size(name, image_size)
    if weights_file is not None:
        path = Path(weights_file).expanduser()
        what = "weights file (--weights)"
        state, source = _load_state_dict_file(path, what), f"{what} {path}"
    elif pretrained:
        state, source = _timm_pretrained_state_dict(name)
    else:
        return _with_width(timm.create_model(name, num_classes=outputs, **size))
    # Checked against the model as timm builds it by default (its pretrained classes and
    # input size), which is what a timm state_dict holds; the meta device costs nothing.
    with torch.device("meta"):
        standard = timm.create_model(name)
    _check_matches(standard, state, arch, source, standard.num_classes)
    # Through timm's loader, which adapts the weights to img_size (resamples a ViT's position
    # embeddings); with its standard classifier the load is strict.
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"state_dict": state},
                              **size)
    model.reset_classifier(outputs)
    return _with_width(model)


def _with_width(model: nn.Module) -> tuple[nn.Module, int]:
    # Models with a pre-logits layer (head_hidden_size) give that, not num_features.
    return model, int(getattr(model, "head_hidden_size", None) or model.num_features)


# ----------------------------------------------------------------------------- build


def build_model(
    arch: str,
    pretrained: bool = False,
    head: str = "classification",
    weights_file: str | Path | None = None,
    image_size: int | None = None,
) -> nn.Module:
    """A torchvision classification model (or `timm/<name>`) by name with a `head` classifier.

    `pretrained` loads the DEFAULT ImageNet weights through torchvision's hub cache
    (downloading them when online), or timm's pretrained weights through the Hugging Face
    hub cache; `weights_file` loads a local state_dict of the arch's standard model instead,
    and wins when both are given. Either is loaded before the head is replaced, so only the
    new head starts from random weights. `image_size` sizes timm's fixed-size models (ViTs);
    torchvision's keep their standard size.
    """
    return _build(arch, pretrained, head, weights_file, image_size)[0]


def build_backbone(arch: str, pretrained: bool = False, weights_file: str | Path | None = None,
                   image_size: int | None = None) -> tuple[nn.Module, int]:
    """`build_model`'s network without a classifier (pooled features out) and their width."""
    return _build(arch, pretrained, None, weights_file, image_size)


def _build(arch: str, pretrained: bool, head: str | None, weights_file: str | Path | None,
           image_size: int | None) -> tuple[nn.Module, int]:
    """The model with a `head` classifier, or none when `head` is None; its feature width."""
    if arch.startswith(TIMM_PREFIX):
        return _build_timm(arch, head, pretrained, weights_file, image_size)
    _check_arch(arch)
    outputs = head_outputs(head) if head else FEATURES
    state, source = _initial_weights(arch, pretrained, weights_file)
    model = get_model(arch, weights=None, **_standard_kwargs(arch, state is not None))
    if state is not None:
        _check_matches(model, state, arch, source)
        model.load_state_dict(state)
    _drop_aux_heads(model)
    return model, _replace_classifier(model, arch, outputs)


def _initial_weights(
    arch: str, pretrained: bool, weights_file: str | Path | None
) -> tuple[Mapping[str, torch.Tensor] | None, str]:
    """The state_dict to start from (None: random) and a description of where it came from."""
    if weights_file is not None:
        path = Path(weights_file).expanduser()
        what = "weights file (--weights)"
        return _load_state_dict_file(path, what), f"{what} {path}"
    if pretrained:
        state = _pretrained_state_dict(arch)
        return state, f"ImageNet weights {expected_weights_file(arch)}"
    return None, "random initialisation"
