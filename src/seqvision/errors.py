"""The error hierarchy. The CLI prints any of these as one line and exits non-zero."""

from __future__ import annotations


class SeqVisionError(Exception):
    """Base class of every error seqvision raises on purpose (bad input, bad config, ...)."""


class DataError(SeqVisionError):
    """A sample, file, manifest row or label that cannot be used; the message names it and the fix."""


class ConfigError(SeqVisionError):
    """An option or combination of options that cannot work; the message says which one to change."""


class CheckpointError(SeqVisionError):
    """A checkpoint that is missing, corrupt, unsafe or made for another task."""


class StorageError(SeqVisionError):
    """A file could not be written (disk full, no permission); what was there before is intact."""
