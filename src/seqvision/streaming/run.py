"""``seqvision stream``: a checkpoint and a SOURCE -> one JSON line per frame (or every K frames), as they come.

Rows go to stdout or are appended to a file, one line at a time and flushed, so whatever reads them
sees each frame as soon as it is predicted and a stream that is killed keeps every line it wrote.
Ctrl-C ends a stream cleanly: the rows written stay, and the summary says it was interrupted.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch

from seqvision.errors import ConfigError, StorageError
from seqvision.features.runtimes import check_runtime
from seqvision.runtime import inference_dtype, resolve_device
from seqvision.streaming.sources import SourceFrame, open_source, resolve_source
from seqvision.streaming.stream import Stream, check_count


@dataclass
class StreamSummary:
    """What a stream did."""

    source: str
    frames: int  # frames the model saw (after --frame-step)
    rows: int  # rows written (every --every frames)
    cnn_calls: int  # CNN forwards (one image each)
    kind: str  # carried | running | window (see seqvision.streaming.state)
    window: int | None  # frames an output depends on at most; None: every frame so far
    interrupted: bool = False  # ended by Ctrl-C (or a closed output pipe) rather than by the source


def check_stream_options(
    *, every: int = 1, window: int | None = None, frame_step: int = 1, max_frames: int | None = None,
    idle_timeout: float | None = None, out: str | Path | None = None,
) -> None:
    """Every option of a stream checked, before anything is loaded or opened; a :class:`ConfigError` naming it."""
    check_count(every, "--every")
    check_count(window, "--window", optional=True)
    check_count(frame_step, "--frame-step")
    check_count(max_frames, "--max-frames", optional=True)
    if idle_timeout is not None and (not isinstance(idle_timeout, (int, float)) or not math.isfinite(idle_timeout) or idle_timeout <= 0):
        raise ConfigError(f"--idle-timeout {idle_timeout!r}: must be a positive number of seconds")
    if out is not None and Path(out).is_dir():
        raise ConfigError(f"--out {out}: is a folder; give a file name (e.g. preds.jsonl)")


def stream_rows(stream: Stream, frames: Iterable[SourceFrame], *, max_frames: int | None = None) -> Iterator[dict]:
    """The rows of ``stream`` on ``frames`` (a source), up to ``max_frames`` frames fed to the model."""
    fed = 0
    for item in frames:
        row = stream.push(item.frame, index=item.index, time=item.time, image=item.image)
        fed += 1
        if row is not None:
            yield row
        if max_frames is not None and fed >= max_frames:
            return  # before waiting for another frame of a live source


class JsonLines:
    """Rows as JSON lines on stdout, or appended to a file (created with its folder), flushed line by line."""

    def __init__(self, out: str | Path | None = None) -> None:
        self.out = Path(out) if out is not None else None
        self.closed_pipe = False
        self.count = 0
        if self.out is None:
            self.fh: IO[str] = sys.stdout
            return
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(self.out, "a", encoding="utf-8")
        except OSError as exc:
            raise StorageError(f"--out {self.out}: cannot be written ({exc.strerror or exc})") from None

    def write(self, row: dict) -> bool:
        """Write one row; False when the reader of stdout has gone (``| head``): the stream should end."""
        try:
            self.fh.write(json.dumps(row) + "\n")
            self.fh.flush()
        except BrokenPipeError:
            # nobody reads any more: stop quietly, and keep Python's exit flush from failing on stdout again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            self.closed_pipe = True
            return False
        except OSError as exc:
            raise StorageError(f"--out {self.out or 'stdout'}: writing failed ({exc.strerror or exc}); the lines before it are kept") from None
        self.count += 1
        return True

    def close(self) -> None:
        if self.out is not None:
            self.fh.close()


def run_stream(
    checkpoint: str | Path, source: str | Path, *, out: str | Path | None = None, every: int = 1, window: int | None = None,
    frame_step: int = 1, max_frames: int | None = None, idle_timeout: float | None = None, device: str | torch.device = "cpu",
    precision: str = "auto", on_start: Callable[[str], None] | None = None, runtime: str = "auto",
) -> StreamSummary:
    """Stream ``source`` through the model of ``checkpoint``, writing a JSON line per row (see :func:`stream_rows`).

    The options, the device and precision and the source's kind are checked before the checkpoint is
    loaded (and a file or folder source opened). ``on_start`` gets a line saying what runs (the CLI prints
    it on stderr). Ctrl-C ends the stream cleanly (``interrupted`` in the summary); an error of the source
    midway raises, the lines written before it are kept.
    """
    check_stream_options(every=every, window=window, frame_step=frame_step, max_frames=max_frames, idle_timeout=idle_timeout, out=out)
    spec = resolve_source(source)
    if idle_timeout is not None and spec.kind != "folder":
        warnings.warn(f"--idle-timeout has no effect on a {spec.kind} source (it ends a folder source); the stream ends with its source")
    if precision == "int8":  # its ranges come from a batch of the run's images; a stream has one frame at first
        raise ConfigError("--precision int8 calibrates on a batch of the run's first images, and a stream sees one frame "
                          "at a time; use --precision 32 (or extract/predict with int8)")
    check_runtime(runtime, resolve_device(device), inference_dtype(resolve_device(device), precision))  # fails before loading
    # a file or folder is opened first (a bad one fails before the model loads); a camera or network
    # stream last, so it does not queue frames while the model loads
    frames = None if spec.live else open_source(spec, frame_step=frame_step, idle_timeout=idle_timeout)
    try:
        stream = Stream.load(checkpoint, window=window, every=every, device=device, precision=precision, runtime=runtime)
    except BaseException:
        if frames is not None:
            frames.close()
        raise
    frames = frames or open_source(spec, frame_step=frame_step)
    frames.decode_size = stream.transform.decode_size  # decoded reduced, as predict decodes: the same outputs
    try:
        sink = JsonLines(out)
    except BaseException:
        frames.close()
        raise
    if on_start is not None:
        on_start(start_message(stream, spec.name, frame_step=frame_step, source_fps=frames.fps))
    interrupted = False
    try:
        for row in stream_rows(stream, frames, max_frames=max_frames):
            if not sink.write(row):
                interrupted = True
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        frames.close()
        sink.close()
    return StreamSummary(spec.name, stream.frames, sink.count, stream.cnn_calls, stream.kind, stream.window, interrupted)


def start_message(stream: Stream, source: str, *, frame_step: int = 1, source_fps: float | None = None) -> str:
    """What runs, and the frame-rate caveat: the model was trained on frames sampled from clips, which
    may lie farther apart than a source's consecutive frames (nothing is resampled behind the user's back)."""
    d = stream.predictor.cfg.data
    policy = d.sampling_policy(train=False)
    trained = f"--sampling {policy.mode}" + (f" --num-frames {d.num_frames}" if d.num_frames else "")
    if policy.mode == "stride":
        trained += f" --fps {d.fps:g}" if d.fps else f" --stride {d.stride}"
    fed = "every frame" if frame_step == 1 else f"one frame in {frame_step} (--frame-step {frame_step})"
    advice = "choose --frame-step so that frames are about as far apart as in training"
    if policy.mode == "stride" and d.fps and source_fps:
        advice = f"the source runs at {source_fps:g} fps, so --frame-step {max(1, round(source_fps / d.fps))} matches training's {d.fps:g} fps"
    return f"streaming {source}: {stream.describe()}. The model was trained on frames picked by {trained}; it is fed {fed} of the source: {advice}"
