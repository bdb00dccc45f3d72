"""The checkpoint format: what a checkpoint carries, and reading it safely (no pickled code, verified
weights). No Lightning here: reading a model for prediction needs torch alone. Training writes these
files through Lightning (``seqvision.training.checkpoint``)."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from seqvision.data.transforms import Preprocessing
from seqvision.errors import CheckpointError
from seqvision.io import safe_load, tensor_digest

FORMAT_VERSION = 1


def _installed_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def checkpoint_metadata(config: dict[str, Any], targets: dict[str, Any], prep: Preprocessing) -> dict[str, Any]:
    """Everything needed to rebuild the model and its input pipeline, as plain Python types (``config``:
    the run's :class:`seqvision.config.RunConfig` as a dict; ``targets``: its :class:`seqvision.tasks.TargetSpec`
    as a dict)."""
    import torchvision

    import seqvision

    return {
        "format_version": FORMAT_VERSION,
        "config": config,
        "targets": targets,
        "preprocessing": prep.to_dict(),
        "versions": {
            "seqvision": seqvision.__version__,
            "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__),
            "lightning": _installed_version("lightning"),
            "python": platform.python_version(),
        },
    }


def verify_checkpoint(raw: dict[str, Any], path: Path) -> None:
    """The weights' checksum stored at save time must match the loaded weights (bit rot, bad copies)."""
    expected = raw["seqvision"].get("state_sha256")
    if expected is not None and tensor_digest(raw["state_dict"]) != expected:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its weights do not match the checksum stored in it; use another "
            "checkpoint (last.ckpt / best.ckpt) or retrain"
        )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a seqvision checkpoint with ``weights_only=True``: a pickle that would run code is refused."""
    path = Path(path)
    raw = safe_load(path, CheckpointError, "checkpoint", "use a best.ckpt/last.ckpt written by `seqvision train`")
    if not isinstance(raw, dict) or "seqvision" not in raw or "state_dict" not in raw:
        raise CheckpointError(
            f"{path} is not a seqvision checkpoint (no 'seqvision' metadata); use a best.ckpt/last.ckpt "
            "written by `seqvision train`"
        )
    meta = raw["seqvision"]
    if not isinstance(meta, dict) or not isinstance(raw["state_dict"], dict):
        raise CheckpointError(f"{path}: malformed seqvision checkpoint")
    verify_checkpoint(raw, path)
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer seqvision (format {meta['format_version']}); upgrade")
    return raw
