"""The error hierarchy. The CLI prints any of these as one line and exits non-zero."""

from __future__ import annotations

from pathlib import Path


class SeqVisionError(Exception):
    """Base class of every error seqvision raises on purpose (bad input, bad config, ...)."""


class DataError(SeqVisionError):
    """A sample, file, manifest row or label that cannot be used; the message names it and the fix."""


class BadFileError(DataError):
    """An image or video file that cannot be read or decoded; carries the path and the reason, so a
    caller may skip the file (``--on-bad-image skip``) and say why."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ConfigError(SeqVisionError):
    """An option or combination of options that cannot work; the message says which one to change."""


class CheckpointError(SeqVisionError):
    """A checkpoint that is missing, corrupt, unsafe or made for another task."""


class StorageError(SeqVisionError):
    """A file could not be written (disk full, no permission); what was there before is intact."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message`` (at most ``limit`` characters), also for an empty message:
    how a library's exception is quoted inside one of our one-line errors."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:limit]}" if lines else type(exc).__name__
