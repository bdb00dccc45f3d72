"""The frame-by-frame form of a model trained with ``--temporal-shift causal``, as one exported graph (``stream``).

Online TSM: a causal shift reads only the previous frame, so the model can run one frame at a time if each
shifted convolution keeps the slice of its input it will hand to the next frame, exactly as the temporal
head keeps its recurrent state. The graph makes every piece of that state an explicit input and output:

* inputs: ``image (B, 3, S, S)`` normalized float32, then ``shift_in_0 .. shift_in_{k-1}`` (one per shifted
  convolution, in module order: ``(B, C_i / 8, H_i, W_i)``, its input's first ``C_i / 8`` channels at the
  previous frame), then the head's state (:class:`RecurrentStep` / :class:`RunningStep`: ``h_in``, ``c_in``,
  ``first_in``, ``previous_in``, ``started_in``, ``total_in``, ``count_in``, ``maximum_in`` as the head has them);
* outputs: the task's outputs at this frame (``logits`` and ``probabilities``, or ``values``: ``(B, K)``),
  then ``shift_out_*`` and the head's ``*_out``, each the next frame's ``*_in``.

Every state input is ZEROS at a sequence's first frame (per sample: zero one row to restart one stream of a
batch); feed each ``*_out`` back as the ``*_in`` of the same name. The output after frame t equals the whole
model on frames 0..t (per image: its output at t), which ``seqvision export`` checks frame by frame.

Heads: those a stream steps with carried state or a running statistic (a unidirectional LSTM or GRU with
either readout, a unidirectional attention head of a per-image task, mean, max; with or without
``--temporal-diff``), as :func:`seqvision.streaming.state.head_step` steps them. A head that reads a window
of frames (bidirectional, transformer, attention pooling) has no step form: :func:`step_form` returns None.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from seqvision.export.graphs import with_activation
from seqvision.models.sequence_model import SequenceModel
from seqvision.models.temporal import AttentionHead, GRUHead, LSTMHead, MaxHead, MeanHead, TemporalDiff
from seqvision.models.temporal_shift import carried_convs, streamed_frame


def _difference(feature: torch.Tensor, previous: torch.Tensor, started: torch.Tensor) -> torch.Tensor:
    """``concat(x_t, x_t - x_{t-1})`` with ``x_{-1} := x_0`` (:class:`TemporalDiff`): ``(B, F) -> (B, 2F)``."""
    previous = torch.where(started > 0, previous, feature)  # (B, F): a stream's first frame differs by 0
    return torch.cat([feature, feature - previous], dim=-1)


class RecurrentStep(nn.Module):
    """One step of a unidirectional ``nn.LSTM`` / ``nn.GRU`` head with its state as tensors (the graph form
    of :class:`~seqvision.streaming.state.CarriedStep`): ``h (L, B, H)``, ``c`` (LSTM), ``first (B, H)`` (the
    output at the first frame, ``first+last`` readout), ``previous (B, F)`` (``--temporal-diff``), ``started
    (B, 1)`` (1 after a first frame: what tells a zero state from a carried one)."""

    def __init__(self, rnn: nn.RNNBase, input: nn.Module, *, readout: str, difference: bool, features: int) -> None:
        super().__init__()
        self.rnn = rnn
        self.input = input  # the head's per-step projection (LayerNorm + Linear), or Identity
        self.readout = readout
        self.difference = difference
        self.lstm = isinstance(rnn, nn.LSTM)
        layers, hidden = rnn.num_layers, rnn.hidden_size
        # the carried tensors, in graph order: name -> its shape for a batch of b sequences
        self.state: dict[str, Callable[[Any], tuple]] = {"h": lambda b: (layers, b, hidden)}
        if self.lstm:
            self.state["c"] = lambda b: (layers, b, hidden)
        if readout == "first+last":
            self.state["first"] = lambda b: (b, hidden)
        if difference:
            self.state["previous"] = lambda b: (b, features)
        if readout == "first+last" or difference:
            self.state["started"] = lambda b: (b, 1)

    def forward(self, feature: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``feature (B, F)`` and the state -> the head's output ``(B, D)`` and the next state."""
        new: dict[str, torch.Tensor] = {}
        x = feature
        if self.difference:
            x = _difference(feature, state["previous"], state["started"])
            new["previous"] = feature
        x = self.input(x[:, None])  # (B, 1, H): one step
        if self.lstm:
            out, (new["h"], new["c"]) = self.rnn(x, (state["h"], state["c"]))  # out: (B, 1, H)
        else:
            out, new["h"] = self.rnn(x, state["h"])
        out = out[:, 0]  # (B, H): the last layer at this frame
        if self.readout == "first+last":
            new["first"] = torch.where(state["started"] > 0, state["first"], out)  # the first frame's, kept
            out = torch.cat([out, new["first"]], dim=-1)  # (B, 2H)
        if "started" in state:
            new["started"] = torch.ones_like(state["started"])
        return out, {k: new[k] for k in self.state}


class RunningStep(nn.Module):
    """One step of the mean or max head (the graph form of :class:`~seqvision.streaming.state.RunningStep`):
    mean: ``total (B, F)`` and ``count (B, 1)``; max: ``maximum (B, F)`` and ``started (B, 1)``; with
    ``--temporal-diff`` also ``previous (B, F)`` (and ``started``). ``F``: the features the head reads."""

    def __init__(self, how: str, *, difference: bool, features: int) -> None:
        super().__init__()
        self.how = how
        self.difference = difference
        read = 2 * features if difference else features  # what the running statistic is taken over
        self.state: dict[str, Callable[[Any], tuple]] = {"total": lambda b: (b, read), "count": lambda b: (b, 1)} if how == "mean" else {
            "maximum": lambda b: (b, read)}
        if difference:
            self.state["previous"] = lambda b: (b, features)
        if difference or how == "max":
            self.state["started"] = lambda b: (b, 1)

    def forward(self, feature: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``feature (B, F)`` and the state -> the running mean or max so far ``(B, F)`` and the next state."""
        new: dict[str, torch.Tensor] = {}
        x = feature
        if self.difference:
            x = _difference(feature, state["previous"], state["started"])
            new["previous"] = feature
        if self.how == "mean":
            new["total"], new["count"] = state["total"] + x, state["count"] + 1
            out = new["total"] / new["count"]  # (B, F)
        else:
            new["maximum"] = out = torch.where(state["started"] > 0, torch.maximum(state["maximum"], x), x)
        if "started" in state:
            new["started"] = torch.ones_like(state["started"])
        return out, {k: new[k] for k in self.state}


def step_form(head: nn.Module, *, per_step: bool, features: int) -> RecurrentStep | RunningStep | None:
    """The graph form of the step a stream runs for ``head`` (the same choice as
    :func:`seqvision.streaming.state.head_step` without a window); None for a head that needs a window."""
    inner, difference = (head.head, True) if isinstance(head, TemporalDiff) else (head, False)
    if type(inner) in (LSTMHead, GRUHead) and not inner.rnn.bidirectional:
        return RecurrentStep(inner.rnn, inner.input, readout=inner.readout, difference=difference, features=features)
    if type(inner) is AttentionHead and per_step and not inner.rnn.rnn.bidirectional:  # per image: its LSTM's outputs
        return RecurrentStep(inner.rnn.rnn, inner.rnn.input, readout="last", difference=difference, features=features)
    if type(inner) in (MeanHead, MaxHead):
        return RunningStep("mean" if type(inner) is MeanHead else "max", difference=difference, features=features)
    return None


class StreamGraph(nn.Module):
    """``image (B, 3, S, S), shift_in_*, <head>_in -> outputs, shift_out_*, <head>_out``: one frame of a
    causal-shift model (see the module docstring). Inputs and outputs are flat tensors, in :meth:`input_names`
    / :meth:`output_names` order."""

    def __init__(self, model: SequenceModel, step: RecurrentStep | RunningStep, *, activation: str | None, outputs: list[str]) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.step = step
        self.task_head = model.task_head
        self.activation = activation  # softmax | sigmoid | None (regression)
        self.outputs = outputs  # the task's output names
        self.convs = carried_convs(model.encoder)  # a plain list: the encoder registers them already
        size = model.encoder.preprocessing.image_size
        carried: dict[int, torch.Tensor] = {}
        training = self.encoder.training
        self.encoder.eval()  # the probe must not move BatchNorm statistics
        with torch.no_grad(), streamed_frame(self.encoder, carried):  # one probe frame: each slice's shape
            self.encoder.pool_features(self.encoder.trunk(torch.zeros(1, 3, size, size)))
        self.encoder.train(training)
        self.slices = [tuple(carried[id(c)].shape[1:]) for c in self.convs]  # (C_i / 8, H_i, W_i) each

    def input_names(self) -> list[str]:
        """The graph's inputs in order: the image, each shifted conv's carried slice, the head's state."""
        return ["image", *(f"shift_in_{i}" for i in range(len(self.convs))), *(f"{k}_in" for k in self.step.state)]

    def output_names(self) -> list[str]:
        """The graph's outputs in order: the task's outputs, each new slice, the head's new state."""
        return [*self.outputs, *(f"shift_out_{i}" for i in range(len(self.convs))), *(f"{k}_out" for k in self.step.state)]

    def initial_state(self, batch: int) -> list[torch.Tensor]:
        """Zeros for every state input: what a sequence starts from."""
        return [torch.zeros(batch, *s) for s in self.slices] + [torch.zeros(shape(batch)) for shape in self.step.state.values()]

    def state_shapes(self) -> dict[str, str]:
        """Each state input's shape, as model.json describes it."""
        shapes = {f"shift_in_{i}": ("B", *s) for i, s in enumerate(self.slices)}
        shapes |= {f"{k}_in": shape("B") for k, shape in self.step.state.items()}  # each shape with B for the batch
        return {name: f"({', '.join(map(str, shape))}) float32" for name, shape in shapes.items()}

    def forward(self, image: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``image (B, 3, S, S)`` and the state inputs (:meth:`input_names` order) -> the outputs and the
        next state (:meth:`output_names` order)."""
        k = len(self.convs)
        carried = {id(conv): s for conv, s in zip(self.convs, state[:k])}  # each conv reads its slice, leaves the new one
        with streamed_frame(self.encoder, carried):
            feature = self.encoder.pool_features(self.encoder.trunk(image))  # (B, F)
        out, head_state = self.step(feature, dict(zip(self.step.state, state[k:])))  # (B, D)
        outputs = with_activation(self.task_head(out), self.activation)  # (B, K) each
        return (*outputs, *(carried[id(c)] for c in self.convs), *head_state.values())


def stream_axes(graph: StreamGraph) -> dict[str, dict[int, str]]:
    """ONNX dynamic axes: the batch of every input and output (dimension 1 of the recurrent ``h`` / ``c``)."""
    names = graph.input_names() + graph.output_names()
    return {n: {1 if n.split("_")[0] in ("h", "c") else 0: "batch"} for n in names}


def offline_prefixes(model: SequenceModel, images: torch.Tensor) -> torch.Tensor:
    """What the stream must give after each frame: ``images (T, 3, S, S)`` of one sequence -> ``(T, K)``, row t
    the whole model on frames 0..t (per image: its output at t)."""
    rows = []
    with torch.no_grad():
        for t in range(len(images)):
            out = model(images[: t + 1], torch.tensor([t + 1]))  # (1, K), or (t + 1, K) per image
            rows.append(out[-1])
    return torch.stack(rows)
