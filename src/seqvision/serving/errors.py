"""The service's refusals: an HTTP status and one line naming the file and what to do."""

from __future__ import annotations

from seqvision.errors import SeqVisionError


class ServeError(SeqVisionError):
    """A request the service refuses; the app answers ``{"error": message}`` with ``status``.

    400 empty or malformed request, 401 missing or wrong API key, 413 over a limit (size, images,
    pixels, video length), 415 not an image or a video, 422 a file that cannot be decoded,
    503 the batching queue is full or the service is stopping.
    """

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)
