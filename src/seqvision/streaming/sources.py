"""Where a stream's frames come from: a video file, a camera, a network stream, or a folder that receives images.

Every source yields :class:`SourceFrame` s in order and can be closed. SOURCE, as the CLI takes it:

- a video file: decoded front to back with PyAV (every frame, never a seek);
- a URL that FFmpeg opens (``rtsp://``, ``rtmp://``, ``http(s)://``, ``udp://``, ``tcp://``, ``srt://`` ...);
- a camera: ``/dev/video0`` (Linux, FFmpeg's ``v4l2`` device), ``avfoundation:0`` (macOS),
  ``dshow:video=NAME`` (Windows), ``v4l2:/dev/video1``; a bare number ``N`` is ``/dev/videoN`` on Linux
  and ``avfoundation:N`` on macOS. Cameras and URLs need an FFmpeg built with those devices/protocols;
- a folder: polled for new image files, each taken once, in natural order (``f2`` before ``f10``) among
  the files that arrive together. A file is taken once its size and modification time are the same on
  two polls in a row, so one still being written is never read half-written; hidden names (``.x.jpg``)
  and names that do not end in an image extension (``x.jpg.part``, ``x.tmp``) are ignored, so a writer
  that renames a finished file into place is safe too. A file that cannot be decoded is skipped with a
  warning (a live folder should not stop on one bad file). A file arriving later than others but
  sorting before them is taken when it arrives: order across polls is arrival order.

``frame_step`` keeps every ``S``-th frame of the source (index 0, S, 2S, ...); the others are decoded
(a video must be) but never converted or passed on. Frames keep their index in the source.

``decode_size`` (the model's evaluation transform's, set by ``stream`` once the checkpoint is loaded):
frames are decoded reduced exactly as ``predict`` and ``serve`` decode them (the data layer's own
functions: FFmpeg scales a video frame in its RGB conversion, a large JPEG is decoded at a reduced DCT
scale), so a stream's outputs on HD input are ``predict``'s on the same frames.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time as clock
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from seqvision.data.images import load_image
from seqvision.data.samples import is_image_file, natural_key
from seqvision.data.video import _to_rgb as to_rgb  # the reduced decoding of read_frames, shared: one path
from seqvision.errors import BadFileError, DataError, first_line

log = logging.getLogger("seqvision")

URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
DEVICE_FORMATS = ("v4l2", "avfoundation", "dshow")  # FFmpeg's camera input formats, as SOURCE prefixes
NETWORK_TIMEOUT = (15.0, 30.0)  # seconds to open a network stream, and to wait for its next packet
POLL_SECONDS = 0.25  # how often a folder is listed


@dataclass(frozen=True)
class SourceFrame:
    """One frame of a source."""

    index: int  # its number in the source (0-based), counting the frames --frame-step skips
    time: float | None  # seconds from the source's start (its timestamps); None when it has no clock (a folder)
    frame: torch.Tensor  # (3, H, W) uint8 RGB
    image: str | None = None  # the file it was read from (a folder source)


@dataclass(frozen=True)
class SourceSpec:
    """A SOURCE argument understood, before anything is opened."""

    kind: str  # video | url | camera | folder
    target: str  # what FFmpeg opens, or the folder
    format: str | None = None  # FFmpeg's input format (cameras)
    name: str = ""  # SOURCE as given, for messages

    @property
    def live(self) -> bool:
        return self.kind in ("url", "camera")


def resolve_source(source: str | Path) -> SourceSpec:
    """What ``source`` is (checks that a file, folder or device exists; opens nothing)."""
    name = str(source)
    if URL.match(name):
        return SourceSpec("url", name, None, name)
    prefix, _, rest = name.partition(":")
    if prefix in DEVICE_FORMATS and rest:
        return SourceSpec("camera", rest, prefix, name)
    path = Path(name)
    if name.isdecimal() and not path.exists():
        return _numbered_camera(name)
    if path.is_dir():
        return SourceSpec("folder", name, None, name)
    if name.startswith("/dev/video"):
        if not path.exists():
            raise DataError(f"stream source {name}: no such camera on this machine (ls /dev/video* lists them)")
        return SourceSpec("camera", name, "v4l2", name)
    if path.is_file():
        if is_image_file(path):
            raise DataError(f"stream source {name}: one image is not a stream; give the folder it is written into")
        return SourceSpec("video", name, None, name)
    raise DataError(
        f"stream source {name}: no such file, folder or device; give a video file, a folder that receives images, "
        "a camera (/dev/video0, avfoundation:0) or a URL that FFmpeg opens (rtsp://...)"
    )


def _numbered_camera(number: str) -> SourceSpec:
    if sys.platform.startswith("linux"):
        device = f"/dev/video{number}"
        if not Path(device).exists():
            raise DataError(f"stream source {number}: no camera {device} on this machine")
        return SourceSpec("camera", device, "v4l2", number)
    if sys.platform == "darwin":
        return SourceSpec("camera", number, "avfoundation", number)
    raise DataError(f"stream source {number}: name the camera for FFmpeg, e.g. dshow:video=NAME")


def open_source(
    source: str | Path | SourceSpec, *, frame_step: int = 1, idle_timeout: float | None = None,
    poll_seconds: float = POLL_SECONDS, decode_size: int | None = None,
) -> "VideoSource | FolderSource":
    """Open ``source`` (see the module docstring); a clear :class:`DataError` naming it when it cannot be.
    ``idle_timeout``: a folder source ends after that many seconds without a new file (None: never).
    ``decode_size``: decode reduced, as prediction does (the source's ``decode_size`` may also be set
    before its frames are read)."""
    spec = source if isinstance(source, SourceSpec) else resolve_source(source)
    if spec.kind == "folder":
        return FolderSource(Path(spec.target), frame_step=frame_step, idle_timeout=idle_timeout, poll_seconds=poll_seconds,
                            decode_size=decode_size)
    return VideoSource(spec, frame_step=frame_step, decode_size=decode_size)


class VideoSource:
    """Frames decoded front to back by PyAV from a file, a camera or a network stream."""

    def __init__(self, spec: SourceSpec, *, frame_step: int = 1, decode_size: int | None = None) -> None:
        self.spec, self.name, self.frame_step = spec, spec.name, frame_step
        self.decode_size = decode_size  # shorter side a larger frame is scaled down to as it is converted
        try:
            import av
        except ImportError:
            raise DataError("stream: video, camera and network sources need PyAV: pip install av") from None
        self._errors = (av.error.FFmpegError, OSError, ValueError)
        options = {"timeout": NETWORK_TIMEOUT} if spec.kind == "url" else {}
        try:
            self.container = av.open(spec.target, format=spec.format, **options)
        except self._errors as exc:
            raise self._error(f"cannot be opened ({first_line(exc)})") from None
        if not self.container.streams.video:
            self.container.close()
            raise self._error("has no video stream")
        self.stream = self.container.streams.video[0]
        # frame threads decode ahead, which adds their count in frames of latency: files only
        self.stream.thread_type = "SLICE" if spec.live else "AUTO"
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps: float | None = float(rate) if rate else None  # frames per second, when the source says

    def _error(self, reason: str) -> DataError:
        if self.spec.kind == "video":
            return BadFileError(Path(self.spec.target), reason)
        return DataError(f"stream source {self.name} ({self.spec.kind}): {reason}")

    def __iter__(self) -> Iterator[SourceFrame]:
        base, unit = self.stream.start_time or 0, self.stream.time_base
        index, last = 0, None
        try:
            for frame in self.container.decode(self.stream):
                if index % self.frame_step == 0:
                    seconds = float((frame.pts - base) * unit) if frame.pts is not None and unit else None
                    pixels = torch.from_numpy(to_rgb(frame, self.decode_size)).permute(2, 0, 1)  # (3, H, W)
                    yield SourceFrame(index, seconds, pixels)
                    last = seconds
                index += 1
        except self._errors as exc:
            where = f" after frame {index - 1}" + (f" ({last:.3f} s)" if last is not None else "") if index else ""
            raise self._error(f"decoding failed{where} ({first_line(exc)})") from None

    def close(self) -> None:
        self.container.close()


class FolderSource:
    """Image files as they arrive in a folder (see the module docstring), polled every ``poll_seconds``."""

    fps = None  # a folder has no frame rate

    def __init__(
        self, folder: Path, *, frame_step: int = 1, idle_timeout: float | None = None, poll_seconds: float = POLL_SECONDS,
        sleep: Callable[[float], None] = clock.sleep, now: Callable[[], float] = clock.monotonic,
        decode_size: int | None = None,
    ) -> None:
        self.folder, self.name, self.frame_step = folder, str(folder), frame_step
        self.decode_size = decode_size  # a large JPEG is decoded reduced, its shorter side at least this
        self.idle_timeout, self.poll_seconds = idle_timeout, poll_seconds
        self._sleep, self._now = sleep, now
        self._seen: set[str] = set()  # names taken (or skipped as bad): never again
        self._sizes: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) at the last poll

    def __iter__(self) -> Iterator[SourceFrame]:
        index, active = 0, self._now()
        while True:
            ready, changed = self._poll()
            for path in ready:
                self._seen.add(path.name)
                self._sizes.pop(path.name, None)
                try:
                    pixels = load_image(path, decode_size=self.decode_size) if index % self.frame_step == 0 else None
                except BadFileError as exc:
                    log.warning("%s; skipped", exc)
                    continue
                if pixels is not None:
                    yield SourceFrame(index, None, pixels, path.name)
                index += 1
            if ready or changed:
                active = self._now()
            elif self.idle_timeout is not None and self._now() - active >= self.idle_timeout:
                return
            if not ready:
                self._sleep(self.poll_seconds)

    def _poll(self) -> tuple[list[Path], bool]:
        """The new files that are complete, in natural order up to the first one still changing (so files
        arriving together keep their order), and whether any new file appeared or grew."""
        try:
            entries = [e for e in os.scandir(self.folder) if e.name not in self._seen and is_image_file(Path(e.name))]
        except OSError as exc:
            raise DataError(f"stream source {self.folder}: the folder cannot be read any more ({first_line(exc)})") from None
        ready, changed, blocked = [], False, False
        for entry in sorted(entries, key=lambda e: natural_key(e.name)):
            try:
                stat = entry.stat()
            except FileNotFoundError:  # removed (or renamed) between the listing and now
                continue
            if not entry.is_file():
                continue
            now = (stat.st_size, stat.st_mtime_ns)
            stable = self._sizes.get(entry.name) == now
            changed |= not stable
            self._sizes[entry.name] = now
            blocked |= not stable
            if stable and not blocked:
                ready.append(Path(entry.path))
        return ready, changed

    def close(self) -> None:
        pass
