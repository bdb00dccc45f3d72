"""A trained model fed one frame at a time: one CNN forward and one step of the temporal head per frame.

    stream = Stream.load("runs/x/best.ckpt", precision="32")
    for frame in frames:               # (3, H, W) uint8 tensors, H x W x 3 uint8 arrays or PIL images
        row = stream.push(frame)       # a dict every ``every`` frames, else None
        if row: print(row["prediction"])

How each head is stepped (state carried, a running statistic, or a sliding window of features) is
:func:`seqvision.streaming.state.head_step`'s decision; :attr:`Stream.kind` says which one a model got.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from seqvision.data.transforms import ClipTransform
from seqvision.errors import ConfigError, DataError
from seqvision.features.encode import encode_batch
from seqvision.inference.predictor import RESERVED_COLUMNS, Predictor, output_columns
from seqvision.streaming.state import head_step
from seqvision.models.temporal_shift import check_streamable, is_shifted, streamed_frame

DEFAULT_WINDOW = 16  # frames, for heads that need a window when neither --window nor the run's --num-frames says
STREAM_COLUMNS = ("frame", "time", *RESERVED_COLUMNS)  # a row's fixed columns; a class named so gets p_<name>


def check_count(value: Any, what: str, *, minimum: int = 1, optional: bool = False) -> None:
    """A whole number of at least ``minimum`` (or None when ``optional``), else a :class:`ConfigError`
    naming the option ``what`` (the CLI flag)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{what} {value!r}: must be a whole number, at least {minimum}")


class Stream:
    """Per-frame predictions of a :class:`Predictor`'s model on frames handed in one by one.

    Each :meth:`push` applies the checkpoint's evaluation transform to the one frame, runs ONE CNN
    forward on it (the predictor's inference encoder, in its compute precision; the heads run in
    fp32) and one step of the temporal head, then the task head. With a unidirectional LSTM/GRU, a mean
    or a max head the output equals the model on every frame so far at once; other heads (or any head
    given ``window``) see the last ``window`` frames, whose features are kept, never recomputed.
    For a per-image task the output is the per-image output at the newest frame.

    Args:
        predictor: a loaded model (:meth:`Predictor.load`).
        window: run the head on the last ``window`` frames' features (every head); None: carry the state
            over the whole stream where the head allows it, and give the heads that need a window the
            run's ``--num-frames`` (else :data:`DEFAULT_WINDOW`).
        every: return a row for every ``every``-th frame (the 1st, the ``every+1``-th, ...); the model still
            sees every frame pushed.
    """

    def __init__(self, predictor: Predictor, *, window: int | None = None, every: int = 1) -> None:
        check_count(window, "--window", optional=True)
        check_count(every, "--every")
        check_streamable(predictor.model.encoder)  # a bidirectional shift: refused before a source is opened
        self.predictor = predictor
        self.model = predictor.model.eval()
        self.every = every
        default = predictor.cfg.data.num_frames or DEFAULT_WINDOW
        self.step = head_step(self.model.temporal_head, per_step=predictor.spec.per_image, window=window, default_window=default)
        self.transform = ClipTransform(predictor.preprocessing, train=False)  # each image resized and cropped on its own
        self._cnn = predictor._inference_encoder()
        self._dtype = predictor.compute_dtype
        self._columns = output_columns(predictor.task.names, STREAM_COLUMNS)
        self.reset()

    @classmethod
    def load(
        cls, checkpoint: str | Path, *, window: int | None = None, every: int = 1, device: str | torch.device = "cpu",
        precision: str = "auto", runtime: str = "auto",
    ) -> "Stream":
        """A stream of the model in ``checkpoint``; the options are checked before anything is loaded.
        ``precision``: the CNN's (``auto``: bf16 where the hardware is fast at it, ``32``, ``bf16``);
        ``runtime``: what runs its forward (``auto``: the fastest here, see :mod:`seqvision.features.runtimes`)."""
        check_count(window, "--window", optional=True)
        check_count(every, "--every")
        return cls(Predictor.load(checkpoint, device=device, precision=precision, runtime=runtime), window=window, every=every)

    @property
    def kind(self) -> str:
        """How the temporal head is stepped: ``carried``, ``running`` or ``window`` (see :mod:`.state`)."""
        return self.step.kind

    @property
    def window(self) -> int | None:
        """The frames an output depends on at most; None: every frame since the start (or :meth:`reset`)."""
        return self.step.window

    def reset(self) -> None:
        """Start a new sequence: the head's state, the frame count and the counters go back to zero."""
        self.step.reset()
        self.frames = 0  # frames pushed since the start
        self.cnn_calls = 0  # CNN forwards run (one image each): equals ``frames`` unless features were pushed
        self.last_output: torch.Tensor | None = None  # (K,) float32 logits / values of the newest frame
        self._shifted: dict[int, torch.Tensor] = {}  # a causal temporal shift: each block's slice of the last frame

    @torch.inference_mode()
    def encode(self, frame: Any) -> torch.Tensor:
        """``frame`` -> ``(F,)`` float32 features: the evaluation transform and ONE CNN forward."""
        images = self.transform([as_frame(frame)])  # (1, 3, S, S) float, normalized
        self.cnn_calls += 1
        with streamed_frame(self.model.encoder, self._shifted):  # no-op without a temporal shift
            return encode_batch(self._cnn, images, self._dtype)[0]  # (F,) float32

    def push(self, frame: Any, *, index: int | None = None, time: float | None = None, image: str | None = None) -> dict | None:
        """Add the next frame; return its row every ``every`` frames, else None.

        Args:
            frame: a ``(3, H, W)`` uint8 RGB tensor, an ``H x W x 3`` uint8 RGB array or a PIL image.
            index: the frame's number in its source (the row's ``frame``); default: frames pushed before it.
            time: its time in seconds, when known (the row's ``time``, else null).
            image: the file it came from, when it did (the row's ``image``).
        """
        return self.push_features(self.encode(frame), index=index, time=time, image=image)

    @torch.inference_mode()
    def push_features(
        self, feature: torch.Tensor, *, index: int | None = None, time: float | None = None, image: str | None = None
    ) -> dict | None:
        """:meth:`push` for a frame whose ``(F,)`` CNN features are already known (no CNN call)."""
        expected = self.model.encoder.num_features
        if feature.shape != (expected,):
            raise DataError(f"stream: features of shape {tuple(feature.shape)} given; this model takes ({expected},) per frame")
        state = self.step.step(feature.to(self.predictor.device, torch.float32))  # (1, D)
        out = self.model.task_head(state)[0].float()  # (K,)
        self.last_output = out.cpu()
        number = self.frames if index is None else index
        self.frames += 1
        if (self.frames - 1) % self.every:
            return None
        return self._row(number, time, image, self.last_output)

    def _row(self, index: int, time: float | None, image: str | None, out: torch.Tensor) -> dict:
        """The JSON row of one frame: ``frame``, ``time``, (``image``), ``prediction``, one value per output
        (probabilities for classes, the values for regression: the columns of ``Predictor.rows``)."""
        task = self.predictor.task
        values = task.values(out[None])[0]  # (K,)
        row: dict = {"frame": int(index), "time": None if time is None or not math.isfinite(time) else round(float(time), 6)}
        if image is not None:
            row["image"] = image
        row["prediction"] = task.prediction(values)
        row.update({name: round(float(v), 6) for name, v in zip(self._columns, values)})
        return row

    def describe(self) -> str:
        """One line: the head and how this stream steps it."""
        cfg = self.predictor.cfg.model
        head = f"{'bidirectional ' if cfg.bidirectional and cfg.head in ('lstm', 'gru', 'attention') else ''}{cfg.head} head"
        head += " with temporal differences" if cfg.temporal_diff else ""
        if self.kind == "carried":
            how = "its recurrent state carried from frame to frame (each output = the model on every frame so far)"
        elif self.kind == "running":
            how = f"a running {cfg.head} over every frame so far (exact)"
        else:
            how = f"a sliding window of the last {self.window} frames (features reused, never recomputed)"
        shift = " (the causal temporal shift's slices of the previous frame carried)" if is_shifted(self.model.encoder) else ""
        return f"{head}: {how}; one CNN forward per frame{shift}"


def as_frame(frame: Any) -> torch.Tensor:
    """A ``(3, H, W)`` uint8 RGB tensor from a tensor of that shape, an ``H x W x 3`` uint8 array or a PIL
    image; anything else is a :class:`DataError` saying what is accepted."""
    if isinstance(frame, torch.Tensor):
        if frame.dtype != torch.uint8 or frame.dim() != 3 or frame.shape[0] != 3:
            raise DataError(
                f"stream: a frame tensor must be (3, H, W) uint8 RGB, got {tuple(frame.shape)} {frame.dtype} "
                "(an H x W x 3 tensor: .permute(2, 0, 1); floats in [0, 1]: (x * 255).round().to(torch.uint8))"
            )
        return frame
    if isinstance(frame, np.ndarray):
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise DataError(f"stream: a frame array must be H x W x 3 uint8 RGB, got {frame.shape} {frame.dtype}")
        return torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)  # (3, H, W)
    if isinstance(frame, Image.Image):
        return torch.from_numpy(np.asarray(frame.convert("RGB")).copy()).permute(2, 0, 1)
    raise DataError(f"stream: cannot use a {type(frame).__name__} as a frame; give a (3, H, W) uint8 tensor, an H x W x 3 uint8 array or a PIL image")
