"""Video frames decoded by TorchCodec, behind the contract of :func:`seqvision.data.video.read_frames`.

The same frames for the same times (the first frame on screen within half a frame of each time, in
seconds from the stream's start), RGB ``uint8`` ``(3, H, W)``, reduced by FFmpeg to ``decode_size`` in
the decoder itself, and a note for each time past the last decodable frame. Only the pixels' decoder
differs, so it is recorded with the preprocessing (:class:`~seqvision.data.transforms.Preprocessing`)
and enters the feature cache's key like any decode mode.

TorchCodec is optional (``pip install 'seqvision[torchcodec]'`` plus FFmpeg's shared libraries).
``auto`` picks it only where ``benchmarks/video_decoders.py`` showed it faster than PyAV; see
:data:`AUTO_PREFERS_TORCHCODEC`.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING

from seqvision.errors import BadFileError, ConfigError, DataError, first_line

if TYPE_CHECKING:
    import torch

# no torch at import: the configuration (and so the command line's --help) reads these choices
VIDEO_DECODER_CHOICES = ("auto", "pyav", "torchcodec")
# benchmarks/video_decoders.py (2-core AMD EPYC; SD and 1080p H.264, MPEG-4 AVI, a cut Matroska, an MPEG-TS):
# TorchCodec 0.17 took 1.2-1.8x PyAV's CPU per frame reading in order (its resize in the decoder), about the
# same for 16 sampled frames, and gave the wrong frame for 20 of 32 times in the MPEG-TS; its reduced frames
# are closer to --exact-decode's (0.1 grey levels off against PyAV's 1.2). So auto keeps PyAV
AUTO_PREFERS_TORCHCODEC = False
# where a time falls exactly on a frame boundary, the frame that starts there is the one on screen:
# the query stops this far short of half a frame after the wanted time
_EPSILON = 1e-6
INSTALL_HINT = "pip install 'seqvision[torchcodec]' (TorchCodec also needs FFmpeg's shared libraries, e.g. apt-get install libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4 libavdevice59 libavfilter8)"


@lru_cache(maxsize=1)
def torchcodec_problem() -> str | None:
    """Why TorchCodec cannot be used here (not installed, or its FFmpeg libraries missing), or None."""
    try:
        import torchcodec.decoders  # noqa: F401  (loads the FFmpeg libraries: the part that fails without them)
    except ImportError as exc:
        return f"TorchCodec is not installed ({exc})" if "torchcodec" in str(exc) else f"TorchCodec cannot load ({exc})"
    except (OSError, RuntimeError) as exc:  # the package is there, FFmpeg's shared libraries are not
        return f"TorchCodec cannot load FFmpeg ({str(exc).splitlines()[0]})"
    return None


def resolve_video_decoder(choice: str) -> str:
    """``auto``, ``pyav`` or ``torchcodec`` -> the decoder that will make the pixels (``pyav`` | ``torchcodec``).

    Called at the boundary, before any work: asking for TorchCodec where it cannot load is one line naming the fix."""
    if choice not in VIDEO_DECODER_CHOICES:
        raise ConfigError(f"--video-decoder {choice!r} is not one of {', '.join(VIDEO_DECODER_CHOICES)}")
    if choice == "pyav":
        return "pyav"
    problem = torchcodec_problem()
    if choice == "torchcodec":
        if problem is not None:
            raise ConfigError(f"--video-decoder torchcodec: {problem}; {INSTALL_HINT} (or use --video-decoder pyav)")
        return "torchcodec"
    return "torchcodec" if AUTO_PREFERS_TORCHCODEC and problem is None else "pyav"


def usable_video_decoder(recorded: str) -> tuple[str, str | None]:
    """The decoder to read with where a checkpoint recorded ``recorded``: itself, or PyAV with the reason
    when TorchCodec cannot load here (a model trained on TorchCodec's pixels still predicts, on PyAV's: about
    a grey level apart on average where frames are reduced, identical or within rounding at full size)."""
    if recorded == "torchcodec" and torchcodec_problem() is not None:
        return "pyav", f"the checkpoint's video frames were decoded by TorchCodec, but {torchcodec_problem()}: PyAV decodes them here"
    return recorded, None


def reduced_size(width: int, height: int, decode_size: int | None) -> tuple[int, int] | None:
    """``(width, height)`` a frame is scaled to so that its shorter side is ``decode_size`` (keeping its shape),
    or None when it is not larger. The one rule of both decoders: their reduced frames have the same size."""
    short = min(width, height)
    if decode_size is None or short <= decode_size:
        return None
    scale = decode_size / short
    return max(decode_size, round(width * scale)), max(decode_size, round(height * scale))


def read_frames_torchcodec(
    source, times: list[float], fps: float, *, size: tuple[int, int], shown_as: str,
    decode_size: int | None = None, seek_mode: str = "exact",
) -> tuple[list[torch.Tensor], list[str]]:
    """The frames on screen at ``times`` from ``source`` (a path string or a file-like object), as
    :func:`~seqvision.data.video.read_frames` returns them; ``size`` is the stream's ``(width, height)``.

    ``seek_mode``: ``exact`` scans the file's packets once when it is opened (every frame's timestamp
    known, whatever the headers say); ``approximate`` trusts the headers and reads only what it seeks to.
    """
    if torchcodec_problem() is not None:
        raise DataError(f"{shown_as}: the video decoder is TorchCodec, but {torchcodec_problem()}; {INSTALL_HINT}")
    from torchcodec.decoders import VideoDecoder
    from torchcodec.transforms import Resize

    reduced = reduced_size(*size, decode_size)
    # bilinear with antialiasing in FFmpeg, as PyAV's reduced conversion (see video._to_rgb)
    transforms = [Resize((reduced[1], reduced[0]))] if reduced else None
    half = 0.5 / fps
    order = sorted(set(times))
    try:
        base, batch = _played_at(VideoDecoder(source, seek_mode=seek_mode, num_ffmpeg_threads=0, transforms=transforms), order, half, shown_as)
    except (RuntimeError, ValueError, IndexError) as exc:
        if seek_mode == "exact":
            raise BadFileError(shown_as, f"cannot be decoded by TorchCodec ({first_line(exc)})") from None
        # headers that promise frames the file does not hold (a cut file): only a scan finds where it ends
        if not isinstance(source, str):
            source.seek(0)
        return read_frames_torchcodec(source, times, fps, size=size, shown_as=shown_as, decode_size=decode_size, seek_mode="exact")
    notes: list[str] = []
    found: dict[float, torch.Tensor] = {}
    for k, t in enumerate(order):
        frame_time = float(batch.pts_seconds[k]) - base
        if frame_time + half < t:
            notes.append(f"{shown_as}: no frame at {t:.3f} s (the video ends at {frame_time:.3f} s); the last frame is repeated")
        found[t] = batch.data[k]  # (3, H, W) uint8
    return [found[t] for t in times], notes


def _played_at(decoder, order: list[float], half: float, shown_as: str):
    """``(the stream's start in seconds, the frames for the sorted times order)`` from a TorchCodec decoder."""
    meta = decoder.metadata
    base = meta.begin_stream_seconds_from_header or 0.0  # PyAV's stream start: times count from it
    end = meta.end_stream_seconds
    if end is None or not math.isfinite(end):
        raise BadFileError(shown_as, "has no usable duration for TorchCodec; re-encode it (e.g. ffmpeg -i in out.mp4)")
    # the frame on screen just before half a frame after t: for a steady frame rate, the first frame
    # shown within half a frame of t, as PyAV's decoder loop picks it; past the end, the last frame
    queries = [min(base + t + half - _EPSILON, end - _EPSILON) for t in order]
    return base, decoder.get_frames_played_at(queries)  # sorted: one forward pass, seeking only where it pays
