"""Which frames of a sample are used: the same policies for image folders and videos.

A policy turns a sample of ``n`` frames into one or more clips of frame indices:

- ``uniform``   ``num_frames`` spread evenly over the whole sample (all frames when it has fewer or
                ``num_frames`` is None); the same in training and evaluation.
- ``stride``    every ``stride``-th frame (or the stride that gives ``fps`` frames per second of video);
                with ``num_frames``, a window of that many strided frames: random in training, centred
                in evaluation.
- ``random``    ``num_frames`` consecutive frames at a random start in training; in evaluation
                ``clips`` clips at evenly spaced starts whose predictions are averaged (multi-clip).
- ``segments``  TSN: ``num_frames`` equal segments, one random frame from each in training, the centre
                frame of each in evaluation.

A sample shorter than the clip contributes all its frames (variable lengths need no padding); the
dataset reports it once. Policies never read pixels.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from seqvision.errors import ConfigError

MODES = ("uniform", "stride", "random", "segments")


@dataclass(frozen=True)
class SamplingPolicy:
    mode: str = "uniform"
    num_frames: int | None = None
    stride: int = 1
    fps: float | None = None  # stride: target frames per second (videos); overrides ``stride``
    clips: int = 1  # random, evaluation: clips per sample, predictions averaged

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"--sampling {self.mode!r}: use one of {', '.join(MODES)}")
        if self.mode in ("random", "segments") and not self.num_frames:
            raise ConfigError(f"--sampling {self.mode} needs --num-frames N")
        if self.stride < 1 or self.clips < 1 or (self.fps is not None and self.fps <= 0):
            raise ConfigError("--stride and --eval-clips must be at least 1, --fps positive")

    def clips_for(self, n: int, *, train: bool, rng: Any = None, source_fps: float | None = None) -> list[list[int]]:
        """Frame indices (in temporal order) of each clip of a sample with ``n`` frames.

        ``rng``: anything with ``randint``/``randrange`` (a ``random.Random``, or the ``random`` module).
        """
        rng = rng or random.Random(0)
        if n <= 0:
            return [[]]
        k = self.num_frames
        if self.mode == "uniform":
            return [uniform_indices(n, k)]
        if self.mode == "stride":
            positions = list(range(0, n, self.step(source_fps)))
            if k is None or len(positions) <= k:
                return [positions]
            start = rng.randint(0, len(positions) - k) if train else (len(positions) - k) // 2
            return [positions[start : start + k]]
        if self.mode == "random":
            if n <= k:
                return [list(range(n))]
            if train:
                start = rng.randint(0, n - k)
                return [list(range(start, start + k))]
            starts = np.linspace(0, n - k, self.clips) if self.clips > 1 else [(n - k) / 2]
            return [list(range(int(round(s)), int(round(s)) + k)) for s in starts]
        # segments (TSN)
        if n <= k:
            return [list(range(n))]
        edges = np.linspace(0, n, k + 1)
        out = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            lo_i, hi_i = int(np.floor(lo)), max(int(np.floor(lo)) + 1, int(np.ceil(hi)))
            out.append(rng.randrange(lo_i, hi_i) if train else min(n - 1, int((lo + hi) / 2)))
        return [out]

    def step(self, source_fps: float | None = None) -> int:
        """The stride of ``stride`` sampling: ``stride``, or the one that gives ``fps`` of a video."""
        if self.fps is not None and source_fps:
            return max(1, round(source_fps / self.fps))
        return self.stride

    def candidates(self, n: int, *, train: bool, source_fps: float | None = None) -> list[int]:
        """Every frame index (sorted) that a clip of a sample with ``n`` frames can contain, over all
        random draws: what a feature cache must hold so that any epoch finds its frames."""
        if n <= 0:
            return []
        if not train or self.mode == "uniform":  # deterministic: exactly the frames of the clips
            return sorted({i for clip in self.clips_for(n, train=False, source_fps=source_fps) for i in clip})
        if self.mode == "stride":  # a random window of the strided frames
            return list(range(0, n, self.step(source_fps)))
        return list(range(n))  # random start, or a random frame per segment: any frame can be drawn


def uniform_indices(length: int, num_frames: int | None) -> list[int]:
    """Indices of at most ``num_frames`` images spread evenly over ``length`` (first and last included)."""
    if num_frames is None or length <= num_frames:
        return list(range(length))
    if num_frames == 1:
        return [length // 2]
    return np.linspace(0, length - 1, num_frames).round().astype(int).tolist()


def shuffled(indices: list[int], seed: int) -> list[int]:
    """A fixed permutation (seeded per sample): the frame-order control experiment."""
    out = list(indices)
    random.Random(seed).shuffle(out)
    return out
