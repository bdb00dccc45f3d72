"""What a sample is: an id, an ordered list of frame references and its target(s). No pixels here."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ogv", ".3gp", ".ts", ".gif"}
)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class FrameRef:
    """One image file of a sample (a video sample has none: its frames are decoded from ``Sample.video``)."""

    path: Path


@dataclass(frozen=True)
class VideoClip:
    """A sample that is a video file, or the ``[start, end)`` seconds of one (None: from start / to end)."""

    path: Path
    start: float | None = None
    end: float | None = None


@dataclass
class Sample:
    """One training/prediction unit: several images in order, and what to learn from them."""

    id: str
    frames: list[FrameRef]
    label: str | None = None  # classification target (class name)
    targets: dict[str, float] | None = None  # regression targets by name
    split: str | None = None  # train | val | test when the data says so
    # the source it shares with other samples (a video, object, subject, camera, session): samples of one
    # group never straddle a split; None: a source of its own
    group: str | None = None
    source: str = ""  # where it came from (folder or manifest rows), for error messages
    video: VideoClip | None = None  # a video sample: frames are decoded from it (``frames`` is empty)
    labels: list[str] | None = None  # multi-label classification: every class that is on
    frame_labels: list[str | None] | None = None  # per-image classes, aligned with ``frames``
    frame_targets: list[dict[str, float] | None] | None = None  # per-image regression targets


_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that orders ``f2`` before ``f10`` (digit runs compare as numbers)."""
    parts = _DIGITS.split(name)
    # isdecimal, not isdigit: '²' is a digit that int() refuses (and that \d does not match)
    folded = tuple((0, int(p), "") if p.isdecimal() else (1, 0, p.casefold()) for p in parts if p)
    return folded, name  # case and zero-padding only break ties


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def is_video_file(path: Path) -> bool:
    return is_video_name(path.name)


def is_video_name(name: str) -> bool:
    """Whether a file name (the last part of a path, as ``Path.name`` gives it) is a video's: its suffix
    (pathlib's: from the last dot, never a leading one) is a video extension and the file is not hidden.
    On the name as text, so a million-row manifest needs no ``Path`` per row to ask."""
    # a name without a dot gives its last character, which no extension equals
    return not name.startswith(".") and name[name.rfind("."):].lower() in VIDEO_EXTENSIONS
