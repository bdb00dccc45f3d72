"""One step of a temporal head per new frame: what a stream runs instead of the whole sequence.

A stream sees one frame at a time, forever. :func:`head_step` decides, in one place, how each head
is stepped (its ``kind``):

``carried``
    A unidirectional LSTM or GRU head (any ``num_layers``) carries its recurrent state ``(h, c)`` (GRU:
    ``h``) from frame to frame: one recurrent step per frame, each step's features through the head's input
    projection first. The output after frame t equals the head on frames 0..t at once: with the
    ``first+last`` readout, the last layer's outputs at t and at frame 0 (carried beside the state); with
    ``last``, pooled, the last layer's final hidden state, per image its output at t.
    A unidirectional attention head of a per-image task is stepped the same way (its per-image output
    is its LSTM's output; the attention only pools).
``running``
    Mean and max heads keep a running sum and count, or a running max: exact on the whole prefix too.
``window``
    Heads that read the whole sequence at once (bidirectional LSTM/GRU, attention pooling, the
    transformer, any other registered head) keep the features of the last ``window`` frames and run on
    them every frame: the output equals the model on those frames (on the frames so far while fewer
    have come). Each frame's CNN features are computed once and reused while it is in the window.
    Every head is stepped this way when a window is asked for (``window=N``), the LSTM too: then its
    state is not carried past the window, as in training on clips of ``N`` frames.

``temporal_diff``: carried and running steps keep the previous frame's features and feed
``concat(x_t, x_t - x_{t-1})`` with ``x_{-1} := x_0``, as :class:`TemporalDiff` does over a sequence; a
window runs the wrapper itself, so its first difference is 0 at the window's first frame, exactly as
the model given those frames.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

import torch
from torch import nn

from seqvision.models.temporal import (
    AttentionHead,
    GRUHead,
    LSTMHead,
    MaxHead,
    MeanHead,
    TemporalDiff,
)

STEP_KINDS = ("carried", "running", "window")


class HeadStep(Protocol):
    """The incremental form of a temporal head: one ``(F,)`` feature vector in, the head's output out."""

    kind: str  # one of STEP_KINDS
    window: int | None  # frames the output depends on at most (window kind), else None: the whole prefix

    def step(self, feature: torch.Tensor) -> torch.Tensor:
        """``(F,)`` features of the new frame -> ``(1, D)``: the head's output after it."""

    def reset(self) -> None:
        """Forget every frame: the next one starts a new sequence."""


class _Difference:
    """``x_t -> concat(x_t, x_t - x_{t-1})`` frame by frame, ``x_{-1} := x_0`` (the first difference is 0)."""

    def __init__(self) -> None:
        self.previous: torch.Tensor | None = None

    def __call__(self, feature: torch.Tensor) -> torch.Tensor:
        previous = feature if self.previous is None else self.previous
        self.previous = feature
        return torch.cat([feature, feature - previous])  # (2F,)


class CarriedStep:
    """A unidirectional ``nn.LSTM``/``nn.GRU`` (batch_first, any number of layers) stepped with its state."""

    kind = "carried"
    window = None

    def __init__(self, rnn: nn.RNNBase, *, difference: bool, input: nn.Module | None = None, readout: str = "last") -> None:
        assert rnn.batch_first and not rnn.bidirectional, "only a unidirectional batch-first RNN can carry its state"
        self.rnn = rnn
        self.input = input if input is not None else nn.Identity()  # the head's per-step input projection
        self.readout = readout  # first+last: the output at the first frame is carried beside the state
        self.difference = difference
        self.reset()

    def reset(self) -> None:
        # (layers, 1, H), or for an LSTM the pair (h, c); None: zeros, as at the start of a sequence
        self.state: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None
        self.first: torch.Tensor | None = None  # (1, H): the output at the stream's first frame
        self._diff = _Difference() if self.difference else None

    def step(self, feature: torch.Tensor) -> torch.Tensor:
        x = self._diff(feature) if self._diff else feature
        out, self.state = self.rnn(self.input(x[None, None]), self.state)  # x: (1, 1, F); out: (1, 1, H)
        if self.readout == "last":
            return out[:, -1]  # (1, H): the last layer at this frame = the pooled output (h_n[-1]) so far
        if self.first is None:
            self.first = out[:, -1]
        return torch.cat([out[:, -1], self.first], dim=-1)  # (1, 2H): this frame's output and the first's


class RunningStep:
    """The mean or max head over every frame so far: a running sum and count, or a running max."""

    kind = "running"
    window = None

    def __init__(self, how: str, *, difference: bool) -> None:
        assert how in ("mean", "max")
        self.how = how
        self.difference = difference
        self.reset()

    def reset(self) -> None:
        self.total: torch.Tensor | None = None  # (F,): the sum (float64: hours of frames lose no precision) or the max
        self.count = 0
        self._diff = _Difference() if self.difference else None

    def step(self, feature: torch.Tensor) -> torch.Tensor:
        x = self._diff(feature) if self._diff else feature
        self.count += 1
        if self.how == "max":
            self.total = x.clone() if self.total is None else torch.maximum(self.total, x)
            return self.total[None]  # (1, F)
        self.total = x.double() if self.total is None else self.total + x
        return (self.total / self.count).to(x.dtype)[None]  # (1, F)


class WindowStep:
    """The whole head run on the features of the last ``window`` frames (kept, never recomputed)."""

    kind = "window"

    def __init__(self, head: nn.Module, *, window: int, per_step: bool) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1 frame, got {window}")
        self.head = head
        self.window = window
        self.per_step = per_step
        self.reset()

    def reset(self) -> None:
        self.features: deque[torch.Tensor] = deque(maxlen=self.window)  # (F,) each, oldest first

    def step(self, feature: torch.Tensor) -> torch.Tensor:
        self.features.append(feature)
        x = torch.stack(tuple(self.features))[None]  # (1, n, F), n <= window: no padding, length n
        lengths = torch.tensor([x.shape[1]])
        out = self.head(x, lengths, per_step=self.per_step)  # (1, D), or (1, n, D) per image
        return out[:, -1] if self.per_step else out  # per image: the newest frame's output


def head_step(head: nn.Module, *, per_step: bool, window: int | None = None, default_window: int = 16) -> HeadStep:
    """The incremental step for ``head`` (a temporal head, maybe wrapped in :class:`TemporalDiff`).

    Args:
        head: the model's temporal head, in evaluation mode.
        per_step: the task has one output per image (the head's ``per_step`` output at each frame).
        window: run every head on the last ``window`` frames (see the module docstring); None: carry or
            run the state over the whole stream where the head allows it, else ``default_window``.
        default_window: the window of heads that need one when ``window`` is None.
    """
    inner, difference = (head.head, True) if isinstance(head, TemporalDiff) else (head, False)
    if window is not None:
        return WindowStep(head, window=window, per_step=per_step)
    # exact types, not isinstance: a subclass may change forward, and the window is right for any head
    if type(inner) in (LSTMHead, GRUHead) and not inner.rnn.bidirectional:
        return CarriedStep(inner.rnn, difference=difference, input=inner.input, readout=inner.readout)
    if type(inner) is AttentionHead and per_step and not inner.rnn.rnn.bidirectional:
        return CarriedStep(inner.rnn.rnn, difference=difference, input=inner.rnn.input)  # per image: no pooling
    if type(inner) in (MeanHead, MaxHead):
        return RunningStep("mean" if type(inner) is MeanHead else "max", difference=difference)
    return WindowStep(head, window=default_window, per_step=per_step)
