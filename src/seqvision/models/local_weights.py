"""A local weights file (``--weights PATH``): its tensors, loaded safely, and the preprocessing it expects.

A state_dict says nothing about how its images were normalized, and a wrong mean/std or input size gives
features that are quietly worse, never an error. So the preprocessing travels beside the file, in a
sidecar ``PATH.json`` (``model.pth`` -> ``model.pth.json``)::

    {"image_size": 224, "resize_size": 256, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
     "interpolation": "bilinear"}

It becomes the backbone's pretrained preprocessing (``--image-size``, ``--resize-size``, ``--mean`` and
``--std`` still override it) and so is recorded in checkpoints and feature-cache keys. Without a sidecar
the backbone's own default is assumed, said in one warning line that shows how to write the file.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from pathlib import Path

import torch
from torch import nn

from seqvision.data.transforms import INTERPOLATIONS, Preprocessing
from seqvision.errors import ConfigError
from seqvision.io import safe_load

_REQUIRED = ("image_size", "mean", "std")
_OPTIONAL = ("resize_size", "interpolation")  # default: the backbone's resize/crop ratio, bilinear


def sidecar_path(path: str | Path) -> Path:
    """Where the preprocessing of the weights file ``path`` is read from: ``PATH.json``."""
    return Path(f"{path}.json")


def load_local_weights(model: nn.Module, path: str, name: str, *, kept: nn.Module | None = None, drop: int = 0) -> None:
    """Load a local state_dict or checkpoint (``state_dict`` / ``model`` key) safely (no pickled code).

    ``kept``: the part of ``model`` that a cut backbone keeps (``--drop-stages drop``): the file must then hold
    its weights, under ``model``'s names, and may hold the rest. So a file saved from the whole backbone and
    one saved from the cut trunk (the dropped stages' keys missing) both load; a file that fits neither is
    refused naming both."""
    raw = safe_load(Path(path), ConfigError, "--weights", "use imagenet, none or a path to a state_dict")
    state = raw
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            state = raw[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"--weights {path}: expected a state_dict of tensors")
    state = {k.removeprefix("module.").removeprefix("model."): v for k, v in state.items()}
    needed = set(model.state_dict()) if kept is None else _keys_of(model, kept)
    missing, unexpected = sorted(needed - set(state)), sorted(set(state) - set(model.state_dict()))
    fits = (f"does not fit backbone {name!r}" if kept is None
            else f"fits neither backbone {name!r} nor its cut without the last {drop} stages (--drop-stages {drop})")
    if missing or unexpected:
        raise ConfigError(
            f"--weights {path} {fits}: {len(missing)} missing and {len(unexpected)} unexpected keys "
            f"(e.g. {(missing + unexpected)[:3]}); was it saved from another model?"
        )
    try:
        model.load_state_dict(state, strict=False)  # every key it needs is there (checked above)
    except RuntimeError as exc:  # a tensor of another shape: another width of the same architecture
        raise ConfigError(f"--weights {path} {fits}: {str(exc).strip().splitlines()[-1].strip()}") from None


def _keys_of(model: nn.Module, part: nn.Module) -> set[str]:
    """The ``state_dict`` keys of ``model`` that belong to ``part``'s children (modules of ``model``)."""
    children = {id(child) for child in part.children()}
    return {f"{prefix}.{key}" if prefix else key
            for prefix, module in model.named_modules() if id(module) in children for key in module.state_dict()}


_NO_SIDECAR = r"--weights .* has no .* beside it"  # the start of local_preprocessing's warning


@contextlib.contextmanager
def preprocessing_given(given: bool):
    """Around building a backbone: when the run gives the preprocessing itself (``given``: ``--mean`` and
    ``--std``), a weights file without a sidecar assumes nothing the run uses, so that is not said."""
    with warnings.catch_warnings():
        if given:
            warnings.filterwarnings("ignore", message=_NO_SIDECAR)
        yield


def local_preprocessing(path: str, default: Preprocessing) -> Preprocessing:
    """The preprocessing the weights file ``path`` expects: its sidecar ``PATH.json``, or ``default`` (the
    backbone's own) with one warning when there is none. A malformed sidecar raises a ConfigError naming it."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        example = json.dumps({"image_size": default.image_size, "resize_size": default.resize_size,
                              "mean": list(default.mean), "std": list(default.std)})
        warnings.warn(
            f"--weights {path} has no {sidecar.name} beside it: assuming {_described(default)}; if the weights "
            f"expect other inputs, say so in {sidecar}, e.g. {example}, or pass --mean/--std/--image-size",
            stacklevel=2,
        )
        return default
    try:
        raw = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"weights preprocessing {sidecar}: not readable JSON ({exc})") from None
    return _parsed(raw, sidecar, default)


def _parsed(raw: object, sidecar: Path, default: Preprocessing) -> Preprocessing:
    def bad(what: str) -> ConfigError:
        return ConfigError(f"weights preprocessing {sidecar}: {what}; expected e.g. "
                           '{"image_size": 224, "resize_size": 256, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}')

    if not isinstance(raw, dict):
        raise bad(f"a JSON object is needed, not {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise bad(f"unknown key(s) {', '.join(unknown)} (it takes {', '.join(_REQUIRED + _OPTIONAL)})")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise bad(f"{', '.join(missing)} missing")
    size = _pixels(raw["image_size"], "image_size", bad)
    resize = raw.get("resize_size", round(size * default.resize_size / default.image_size))
    resize = _pixels(resize, "resize_size", bad)
    if resize < size:
        raise bad(f"resize_size {resize} is smaller than image_size {size} (the centre crop would pad with black)")
    mean, std = _rgb(raw["mean"], "mean", bad), _rgb(raw["std"], "std", bad)
    if any(s <= 0 for s in std):
        raise bad("std values must be positive")
    if max(mean + std) > 1:  # e.g. [123.7, 116.3, 103.5]: a 0-255 convention, but pixels are scaled to [0, 1]
        raise bad("mean and std are on [0, 1] RGB (pixels are scaled to [0, 1] first): divide 0-255 values by 255")
    interpolation = raw.get("interpolation", "bilinear")
    if interpolation not in INTERPOLATIONS:
        raise bad(f"interpolation {interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
    return Preprocessing(size, resize, mean, std, interpolation=interpolation, decode=default.decode)


def _pixels(value: object, key: str, bad) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad(f"{key} must be a whole number of pixels (at least 1), not {value!r}")
    return value


def _rgb(value: object, key: str, bad) -> tuple[float, float, float]:
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise bad(f"{key} must be a list of 3 numbers (R, G, B), not {value!r}")
    return tuple(float(v) for v in value)


def _described(prep: Preprocessing) -> str:
    imagenet = prep.mean == (0.485, 0.456, 0.406) and prep.std == (0.229, 0.224, 0.225)
    norm = "ImageNet's mean/std" if imagenet else f"mean {list(prep.mean)}, std {list(prep.std)}"
    return f"{norm} and {prep.image_size} px (resized to {prep.resize_size}, {prep.interpolation})"
