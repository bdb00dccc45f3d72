"""Samples -> transformed clips -> a flat batch of real images plus lengths (no padded image, ever)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.utils.data import Dataset

from seqvision.data.images import BadImageError, load_image
from seqvision.data.samples import Sample
from seqvision.data.sampling import shuffled, uniform_indices
from seqvision.data.transforms import ClipTransform
from seqvision.errors import DataError


@dataclass
class Batch:
    """A collated batch. ``images`` holds only real images, sample after sample: ``N = lengths.sum()``."""

    images: torch.Tensor  # (N, 3, S, S) float, or (N, F) cached features when ``precomputed``
    lengths: torch.Tensor  # (B,) long, images per sample
    sample_ids: list[str]
    targets: torch.Tensor | None = None  # (B,) long class indices, or (B, K) float regression targets
    skipped: list[str] = field(default_factory=list)  # what --on-bad-image skip left out, for the summary
    errors: list[str] = field(default_factory=list)  # bad input found in a worker; raised in the main process
    precomputed: bool = False  # images holds CNN features from the cache: run the heads only

    def raise_errors(self) -> None:
        if self.errors:
            raise DataError(self.errors[0])


class SequenceDataset(Dataset):
    """Loads the images of one sample, in order, through one :class:`ClipTransform`.

    Errors are not raised inside the dataset: a DataLoader worker would wrap them in a traceback.
    They travel in the batch (``Batch.errors``) and :meth:`Batch.raise_errors` raises them cleanly.
    """

    def __init__(
        self,
        samples: list[Sample],
        transform: ClipTransform,
        *,
        encode_target: Callable[[Sample], torch.Tensor | None] | None = None,
        max_images: int | None = None,
        on_bad_image: str = "error",
        shuffle_frames: bool = False,
        seed: int = 0,
    ) -> None:
        self.samples = samples
        self.transform = transform
        self.encode_target = encode_target
        self.max_images = max_images
        self.on_bad_image = on_bad_image
        self.shuffle_frames = shuffle_frames
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def frame_indices(self, index: int) -> list[int]:
        sample = self.samples[index]
        indices = uniform_indices(len(sample.frames), self.max_images)
        if self.shuffle_frames:
            indices = shuffled(indices, seed=self.seed * 1_000_003 + index)
        return indices

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        item: dict = {"id": sample.id, "skipped": [], "error": None, "clip": None, "target": None}
        paths = [sample.frames[i].path for i in self.frame_indices(index)]
        clip = self.load_clip(index, paths, item)
        if item["error"]:
            return item
        if clip is None:
            message = f"sample {sample.id!r} ({sample.source}): no readable image"
            if self.on_bad_image != "skip" or not sample.frames:
                item["error"] = f"{message}; every sample needs at least one image"
            else:
                item["skipped"].append(message + ", sample left out")
            return item
        item["clip"] = clip
        if self.encode_target is not None:
            item["target"] = self.encode_target(sample)
        return item

    def bad_frame(self, item: dict, message: str) -> None:
        """Record a bad image: an error (default) or, with ``on_bad_image='skip'``, a reported skip."""
        if self.on_bad_image != "skip":
            item["error"] = f"{message}. Fix or remove the file, or pass --on-bad-image skip"
        else:
            item["skipped"].append(message)

    def load_clip(self, index: int, paths: list, item: dict) -> torch.Tensor | None:
        """Decode and transform the images at ``paths`` -> ``(T, 3, S, S)``; ``None`` if none is readable."""
        frames = []
        for path in paths:
            try:
                frames.append(load_image(path))
            except BadImageError as exc:
                self.bad_frame(item, f"sample {self.samples[index].id!r}: image {path}: {exc.reason}")
                if item["error"]:
                    return None
        return self.transform(frames) if frames else None


def collate(items: list[dict]) -> Batch:
    """Concatenate the clips of a batch into ``(N, 3, S, S)``; samples left out are only reported."""
    kept = [it for it in items if it["clip"] is not None]
    skipped = [msg for it in items for msg in it["skipped"]]
    errors = [it["error"] for it in items if it["error"]]
    if not kept:
        return Batch(torch.empty(0), torch.zeros(0, dtype=torch.long), [], None, skipped, errors)
    targets = None
    if kept[0]["target"] is not None:
        targets = torch.stack([it["target"] for it in kept])
    return Batch(
        images=torch.cat([it["clip"] for it in kept]),
        lengths=torch.tensor([len(it["clip"]) for it in kept], dtype=torch.long),
        sample_ids=[it["id"] for it in kept],
        targets=targets,
        skipped=skipped,
        errors=errors,
        precomputed=kept[0]["clip"].dim() == 2,
    )
