"""Which images of a sample are used: all of them, or ``max_images`` spread uniformly over the sample."""

from __future__ import annotations

import random

import numpy as np


def uniform_indices(length: int, max_images: int | None) -> list[int]:
    """Indices of at most ``max_images`` images spread evenly over ``length`` (first and last included)."""
    if max_images is None or length <= max_images:
        return list(range(length))
    if max_images == 1:
        return [length // 2]
    return np.linspace(0, length - 1, max_images).round().astype(int).tolist()


def shuffled(indices: list[int], seed: int) -> list[int]:
    """A fixed permutation (seeded per sample): the frame-order control experiment."""
    out = list(indices)
    random.Random(seed).shuffle(out)
    return out
