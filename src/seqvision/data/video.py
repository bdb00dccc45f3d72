"""Video files with PyAV: probe a clip's frame count without decoding, and decode only the frames used.

Frames are located by time. For each wanted time (in order) the decoder seeks to the key frame before
it, unless that time lies a little ahead of the decoder's position (then decoding on is cheaper than a
seek), and decodes forward to the first frame that covers it. A 10-minute video sampled at 16 times
decodes 16 short key-frame-to-target runs, never the whole file.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from seqvision.data.packs import member_of
from seqvision.data.remote import open_file, shown, url_of, version
from seqvision.data.video_torchcodec import read_frames_torchcodec, reduced_size
from seqvision.errors import BadFileError, DataError

SEEK_AHEAD_SECONDS = 1.0  # decode forward instead of seeking when the next frame is this close




@dataclass(frozen=True)
class VideoInfo:
    """A clip of a video: ``num_frames`` frames at ``fps`` from ``start`` seconds on, ``width`` x ``height``."""

    fps: float
    start: float
    num_frames: int
    width: int = 0  # of the stream, from its headers: the size a decoder scales a reduced frame to
    height: int = 0

    def frame_time(self, index: int) -> float:
        return self.start + index / self.fps


def _av():
    try:
        import av
    except ImportError:
        raise DataError("video input needs PyAV: pip install av") from None
    return av


def _open(path: Path):
    av = _av()
    member = member_of(path)  # a packed video: its byte range of the shard, read as a file
    # a video by URL: a file over ranged requests (a BadFileError naming it when it cannot be opened)
    source = member.open() if member is not None else open_file(path) if url_of(path) is not None else str(path)
    try:
        container = av.open(source)
    except FileNotFoundError:
        raise BadFileError(shown(path), "file does not exist") from None
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise BadFileError(shown(path), f"not a readable video ({type(exc).__name__}: {exc})") from None
    if not container.streams.video:
        kinds = ", ".join(sorted({s.type for s in container.streams}))
        container.close()
        if not kinds:
            raise BadFileError(shown(path), "holds no streams at all (an empty, zero-frame video)")
        if "audio" in kinds:
            raise BadFileError(shown(path), f"has no video stream (only {kinds}); an audio-only file cannot be a sample")
        # no audio either: what FFmpeg sees of an mp4/mov cut before its index (the moov atom at the end)
        raise BadFileError(shown(path), f"is truncated or damaged: no video stream can be found (only {kinds}); copy or export it again")
    return container


def probe_video(path: str | Path, start: float | None = None, end: float | None = None) -> VideoInfo:
    """Frame rate, duration and the number of frames in ``[start, end)`` from the container's headers.

    Remembered per file version (path, size, modification time) in this process: filtering, cache
    planning, the datasets and the report all ask for the same videos' headers."""
    path = Path(path)
    member = member_of(path)  # first: a member of a pack given by URL is a URL too
    if member is not None:
        return _probe(path, *member.version(), start, end)
    if url_of(path) is not None:
        return _probe(path, *version(path), start, end)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise BadFileError(shown(path), "file does not exist") from None
    except OSError as exc:
        raise BadFileError(shown(path), f"cannot be read ({exc.strerror or exc})") from None
    return _probe(path, stat.st_size, stat.st_mtime_ns, start, end)


@lru_cache(maxsize=65536)
def _probe(path: Path, size: int, mtime_ns: int, start: float | None, end: float | None) -> VideoInfo:
    container = _open(path)
    try:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        frames = int(stream.frames or 0)
        width, height = stream.width, stream.height
        if fps <= 0 and frames and duration:
            fps = frames / duration
        if duration is None and frames and fps > 0:
            duration = frames / fps
        if fps <= 0 or not duration or duration <= 0:
            if frames == 0:
                raise BadFileError(shown(path), "has no frames (zero-length or empty video stream)")
            raise BadFileError(shown(path), "has no usable frame rate or duration in its headers; re-encode it (e.g. ffmpeg -i in out.mp4)")
    finally:
        container.close()
    clip_start = 0.0 if start is None else float(start)
    clip_end = duration if end is None else float(end)
    if not (math.isfinite(clip_start) and math.isfinite(clip_end)):
        raise BadFileError(shown(path), "start/end must be finite numbers of seconds")
    if clip_start < 0 or clip_start >= duration:
        raise BadFileError(shown(path), f"start {clip_start:g} s is outside the video (0 to {duration:.3f} s)")
    if clip_end <= clip_start:
        raise BadFileError(shown(path), f"end {clip_end:g} s is not after start {clip_start:g} s")
    if clip_end > duration + 1.0 / fps:
        raise BadFileError(shown(path), f"end {clip_end:g} s is past the end of the video ({duration:.3f} s)")
    num = max(0, int(round((min(clip_end, duration) - clip_start) * fps)))
    if num == 0:
        raise BadFileError(shown(path), f"the clip {clip_start:g}-{clip_end:g} s holds no frame")
    return VideoInfo(fps=fps, start=clip_start, num_frames=num, width=width, height=height)


def read_frames(
    path: str | Path, times: list[float], fps: float, *, stats: dict | None = None, decode_size: int | None = None,
    decoder: str = "pyav",
) -> tuple[list[torch.Tensor], list[str]]:
    """Decode the frames shown at ``times`` (seconds) as RGB ``uint8`` ``(3, H, W)``, in the given order.

    ``decode_size``: a frame whose shorter side is larger is scaled to it by FFmpeg (bilinear) in
    the same pass that converts it to RGB, instead of converting every full-size pixel and resizing after.

    Each time gets the first frame that is on screen within half a frame of it (variable frame rates
    are handled by timestamps, not frame counts). Returns the frames and notes: a time past the last
    decodable frame (a truncated file, or headers that overstate the length) gets the last frame, and
    that is reported, not hidden. ``stats["decoded"]`` counts the frames actually decoded (PyAV's).

    ``decoder``: ``pyav`` (below) or ``torchcodec`` (:mod:`seqvision.data.video_torchcodec`), already
    resolved from ``auto``; both read local files, packed members and URLs.
    """
    path = Path(path)
    if decoder == "torchcodec":
        return _read_torchcodec(path, times, fps, decode_size)
    if decoder != "pyav":
        raise ValueError(f"decoder must be pyav or torchcodec, got {decoder!r}")
    return _read_pyav(path, times, fps, stats, decode_size)


def _read_pyav(path: Path, times: list[float], fps: float, stats: dict | None, decode_size: int | None) -> tuple[list[torch.Tensor], list[str]]:
    """:func:`read_frames` by PyAV: seeks by time to the key frame before each wanted time, unless decoding on
    from the frame decoded last is cheaper."""
    av = _av()
    order = sorted(set(times))
    found: dict[float, torch.Tensor] = {}
    notes: list[str] = []
    half = 0.5 / fps
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        base = stream.start_time or 0
        tb = float(stream.time_base)
        keys = _key_frame_times(stream, base, tb)
        # the last decoded frame, converted to RGB only when it is kept: the frames decoded on the way
        # from a key frame to the target are never converted
        decoder, last, last_time, count = None, None, -math.inf, 0
        kept: torch.Tensor | None = None
        untimed = False  # frames without timestamps seen: they are timed by counting, so no more seeks
        fresh = True  # nothing read yet: decoding from the file's start needs no seek

        def seek(target: float) -> Iterator:
            """The frames from the key frame before ``target`` seconds on; from the file's very start for 0."""
            nonlocal container, stream, fresh
            if target > 0:
                container.seek(base + int(target / tb), stream=stream, backward=True, any_frame=False)
            elif not fresh:
                # reopened, not sought to 0: a seek lands on the first key frame the demuxer can find, which
                # in an MPEG-TS without an index (or one cut mid-GOP) may be seconds in
                container.close()
                container = _open(path)
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
            fresh = False
            return container.decode(stream)

        def keep() -> torch.Tensor:
            nonlocal kept
            if kept is None:
                kept = torch.from_numpy(_to_rgb(last, decode_size)).permute(2, 0, 1)  # a view of PyAV's rows
            return kept

        for t in order:
            if last is not None and last_time + half >= t:  # the frame on screen already covers t
                found[t] = keep()
                continue
            if decoder is None or (t - last_time > SEEK_AHEAD_SECONDS and not untimed and _seek_pays(keys, last_time, t - half)):
                decoder = _timed_frames(seek, max(0.0, t - half), fps=fps, base=base, tb=tb)
            try:
                for frame, frame_time in decoder:
                    count += 1
                    untimed = untimed or frame.pts is None
                    last, last_time, kept = frame, frame_time, None
                    if frame_time + half >= t:
                        break
            except av.error.FFmpegError as exc:
                if last is None:
                    raise BadFileError(shown(path), f"cannot be decoded ({type(exc).__name__}: {exc})") from None
                notes.append(f"{shown(path)}: decoding failed after {last_time:.3f} s ({type(exc).__name__}); later frames repeat the last good one")
                decoder = iter(())
            if last is None:
                raise BadFileError(shown(path), "has no decodable frames (zero-frame or corrupt video)")
            if last_time + half < t:
                notes.append(f"{shown(path)}: no frame at {t:.3f} s (the video ends at {last_time:.3f} s); the last frame is repeated")
            found[t] = keep()
    except av.error.FFmpegError as exc:
        raise BadFileError(shown(path), f"cannot be decoded ({type(exc).__name__}: {exc})") from None
    finally:
        container.close()
    if stats is not None:
        stats["decoded"] = stats.get("decoded", 0) + count
    return [found[t] for t in times], notes


def _key_frame_times(stream, base: int, tb: float) -> list[float] | None:
    """The key frames' times (seconds from the stream's start, sorted) from the container's own index, where it
    lists every frame (MP4/MOV, AVI); None where it is partial or absent (Matroska builds its index as it
    reads, an MPEG-TS has none). Free: the demuxer read it with the headers."""
    entries = getattr(stream, "index_entries", None)  # PyAV 14 and later
    if entries is None or not getattr(stream, "frames", 0) or len(entries) != stream.frames:
        return None
    return sorted((e.timestamp - base) * tb for e in entries if e.is_keyframe)


def _seek_pays(keys: list[float] | None, position: float, target: float) -> bool:
    """Whether a seek to ``target`` seconds lands past ``position`` (the frame decoded last), so that it decodes
    fewer frames than decoding on: a key frame lies in between. Unknown without an index: then it is assumed
    (a long gap is more likely to hold a key frame than not). With key frames 25 s apart (OpenCV's vtest.avi),
    seeking to each of 16 times spread over 80 s decoded 1,868 frames of 795: the same GOP again and again."""
    if keys is None:
        return True
    before = bisect_right(keys, target)
    return before > 0 and keys[before - 1] > position


def _read_torchcodec(path: Path, times: list[float], fps: float, decode_size: int | None) -> tuple[list[torch.Tensor], list[str]]:
    """TorchCodec's frames from the same sources PyAV reads: a file-like object for a packed member or a URL."""
    info = probe_video(path)  # remembered: the stream's size, for the reduced frames' size
    member = member_of(path)
    # a URL: seek_mode approximate, so only the ranges it seeks to are fetched (an exact scan would read
    # the whole object); a packed member is local bytes, scanned like a file
    remote = member is None and url_of(path) is not None
    source = member.open() if member is not None else open_file(path) if remote else str(path)
    try:
        return read_frames_torchcodec(source, times, fps, size=(info.width, info.height), shown_as=shown(path),
                                      decode_size=decode_size, seek_mode="approximate" if remote else "exact")
    finally:
        if not isinstance(source, str):
            source.close()


def _timed_frames(seek: Callable[[float], Iterator], target: float, *, fps: float, base: int, tb: float) -> Iterator[tuple[Any, float]]:
    """The frames that ``seek(target)`` decodes (from the key frame before ``target`` seconds on), each with
    the time it is shown, in seconds from the stream's start.

    A frame without a timestamp is shown ``1/fps`` after the last one that had one. When the first frame
    after a seek has none, where the seek landed is unknown: decoding starts again from the stream's start,
    whose first frame is shown at 0, and the frames are counted from there. When the first frame is later
    than ``target`` (an MPEG-TS has no index: FFmpeg's seek may land on the key frame after it), the frames
    in between would be skipped: it seeks again from further back, at worst from the start."""
    anchor, since = None, 0  # the last timestamp seen, and the frames decoded after it
    for frame in seek(target):
        if frame.pts is not None:
            landed = (frame.pts - base) * tb
            if anchor is None and target > 0 and landed > target:
                # as far before the target as it landed after, and a second more: each try starts a second or
                # more earlier, down to the start (which a reopened file decodes from)
                yield from _timed_frames(seek, max(0.0, 2 * target - landed - 1.0), fps=fps, base=base, tb=tb)
                return
            anchor, since = landed, 0
        elif anchor is not None:
            since += 1
        elif target > 0:
            yield from _timed_frames(seek, 0.0, fps=fps, base=base, tb=tb)
            return
        else:
            anchor = 0.0
        yield frame, anchor + since / fps


def _to_rgb(frame, decode_size: int | None):
    """A decoded frame as an ``(H, W, 3)`` RGB array, scaled down (keeping its shape) so that its shorter
    side is ``decode_size`` when it is larger."""
    reduced = reduced_size(frame.width, frame.height, decode_size)
    if reduced is None:
        return frame.to_ndarray(format="rgb24")
    width, height = reduced
    # bilinear: swscale widens its filter when it shrinks (antialiased), like the exact path's resize;
    # on real footage it kept the features closer to full decoding than area averaging did
    return frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="BILINEAR")
