"""The checkpoint format: what a checkpoint carries, and reading it safely (no pickled code, verified
weights). No Lightning here: reading a model for prediction needs torch alone. Training writes these
files through Lightning (``seqvision.training.checkpoint``)."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from seqvision.data.targets import TargetSpec
from seqvision.data.transforms import Preprocessing
from seqvision.errors import CheckpointError
from seqvision.io import tensor_digest

FORMAT_VERSION = 1


def _installed_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def checkpoint_metadata(config: dict[str, Any], spec: TargetSpec, prep: Preprocessing) -> dict[str, Any]:
    """Everything needed to rebuild the model and its input pipeline, as plain Python types (``config``:
    the run's :class:`seqvision.config.RunConfig` as a dict)."""
    import torchvision

    import seqvision

    return {
        "format_version": FORMAT_VERSION,
        "config": config,
        "targets": spec.to_dict(),
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
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded safely ({type(exc).__name__}: {first_line[:200]}); it is "
            "corrupt, truncated, or holds objects other than tensors and plain data"
        ) from None
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
