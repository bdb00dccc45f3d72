"""What one request to ``seqvision serve`` may hold: checked before any decoding or model work."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from seqvision.data.images import MAX_PIXELS
from seqvision.errors import ConfigError


@dataclass(frozen=True)
class ServeLimits:
    """Bounds on one ``POST /predict`` request, so a client cannot exhaust the server's disk, memory or
    CPU. Each is checked from what arrives first (the request's byte count, the multipart headers, an
    image's or video's header) before anything is decoded; a request over one gets a 413."""

    # body bytes, files and multipart framing together: bounds the temporary disk a request takes
    max_request_mb: float = 64.0
    # images one request sends through the CNN: uploaded files, or the frames the checkpoint's sampling
    # takes from a video; bounds the decoded pixels held per request ((T, 3, S, S) float) and its CNN time
    max_images: int = 64
    # pixels of one image or video frame (width x height, read from its header): a small PNG can claim a
    # 100,000 x 100,000 image (a decompression bomb); 40 M covers 8K frames and phone photos
    max_pixels: int = 40_000_000
    # a video's duration from its header: bounds the decoding (seeks) one request can ask for
    max_video_seconds: float = 600.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_request_mb) and self.max_request_mb > 0):
            raise ConfigError(f"--max-request-mb {self.max_request_mb}: give a positive number of megabytes")
        if self.max_images < 1:
            raise ConfigError(f"--max-images {self.max_images}: a request needs at least 1 image")
        if not 1 <= self.max_pixels <= MAX_PIXELS:
            raise ConfigError(
                f"--max-pixels {self.max_pixels}: give 1 to {MAX_PIXELS:,} (images over {MAX_PIXELS:,} pixels are never decoded)"
            )
        if not (math.isfinite(self.max_video_seconds) and self.max_video_seconds > 0):
            raise ConfigError(f"--max-video-seconds {self.max_video_seconds}: give a positive number of seconds")

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 1024 * 1024)

    def to_dict(self) -> dict:
        return asdict(self)
