"""Motion inside the CNN: the temporal shift of TSM (Lin, Gan and Han, ICCV 2019), sample by sample.

A CNN that sees one image at a time cannot see motion; a temporal shift lets it, at no extra FLOPs.
In each residual block of the trainable stages, the input of the residual branch's first convolution
has 1/8 of its channels replaced by the same channels of the previous frame and (``bidirectional``)
1/8 by those of the next frame; ``causal`` reads the past only, so the model can run frame by frame.
The identity path is untouched, so the pretrained block still computes what it did where the shifted
channels agree. Blocks without a residual connection are left alone (TSM's residual shift), except in
``tiny_cnn``, whose plain blocks have none: there each trainable block's input is shifted.

A CNN batch holds the real images of several samples of different lengths, one after the other
(``(N, C, H, W)``, ``N = lengths.sum()``): a shift never crosses from one sample into the next, and a
frame without a neighbour (a sample's first or last) reads zeros, as if the sample were padded.
The encoder learns where the samples lie from :meth:`FrameLayout.of` (``with frames_of(encoder, lengths):``).
:meth:`FrameLayout.of` reads the lengths into Python, which a traced graph would fix to its example: an
exported graph runs the CNN on a PADDED batch ``(B * T, ...)`` instead and shifts along T inside each
sample, padded frames read as zeros (``with padded_frames(encoder,
real):``, :func:`shift_padded`), the same result at every real frame. A stream runs one frame at a time,
each shifted convolution's slice of the previous frame carried (:func:`streamed_frame`; an exported stream
graph carries them as explicit inputs and outputs, in :func:`carried_convs` order).

The shift swaps the class of the chosen convolutions (:class:`ShiftedConv2d` is an ``nn.Conv2d``), so
parameter names, weights and ``state_dict`` keys are exactly the unshifted backbone's: pretrained
weights load into it, and its frozen stages compute the same maps (their cache stays valid).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from seqvision.errors import ConfigError

SHIFT_MODES = ("off", "bidirectional", "causal")
FOLD_DIV = 8  # 1/8 of the channels from each side, TSM's choice


@dataclass(frozen=True)
class FrameLayout:
    """Where each image of a flat CNN batch sits: ``previous[i]`` / ``following[i]`` is the index of the
    same sample's previous / next image in the batch, ``-1`` where the sample has none. ``(N,)`` long each."""

    previous: torch.Tensor
    following: torch.Tensor

    @classmethod
    def of(cls, lengths: torch.Tensor, device: torch.device | None = None) -> "FrameLayout":
        """The layout of ``lengths.sum()`` images, sample after sample (``lengths (B,)``, each >= 1)."""
        lengths = lengths.to(device=device, dtype=torch.long)
        n = int(lengths.sum())
        index = torch.arange(n, device=lengths.device)
        ends = lengths.cumsum(0)  # (B,): one past each sample's last image
        starts = ends - lengths
        sample = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)  # (N,)
        first = index == starts[sample]
        last = index == ends[sample] - 1
        previous = torch.where(first, torch.full_like(index, -1), index - 1)
        following = torch.where(last, torch.full_like(index, -1), index + 1)
        return cls(previous, following)


def neighbour(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[index]`` along the first dimension, zeros where ``index`` is -1. ``x``: ``(N, c, H, W)``."""
    taken = x.index_select(0, index.clamp(min=0))
    return torch.where((index >= 0).view(-1, 1, 1, 1), taken, torch.zeros((), dtype=x.dtype, device=x.device))


def shift_frames(x: torch.Tensor, layout: FrameLayout, mode: str) -> torch.Tensor:
    """``(N, C, H, W)`` -> the same shape: channels ``[0, C/8)`` from each image's previous frame, and
    with ``bidirectional`` channels ``[C/8, C/4)`` from its next frame; the rest as they were."""
    fold = x.shape[1] // FOLD_DIV
    if fold == 0:
        return x
    past = neighbour(x[:, :fold], layout.previous)
    if mode == "causal":
        return torch.cat([past, x[:, fold:]], dim=1)
    future = neighbour(x[:, fold : 2 * fold], layout.following)
    return torch.cat([past, future, x[:, 2 * fold :]], dim=1)


def shift_padded(x: torch.Tensor, real: torch.Tensor, mode: str) -> torch.Tensor:
    """:func:`shift_frames` on a padded batch, with operations every exporter has (no data-dependent
    indexing, no loop): ``x (B * T, C, H, W)``, sample after sample, ``T`` images each; ``real (B, T)``
    bool, True at each sample's real frames. The shifted channels of padded frames read as zeros, so a
    real frame's result is exactly its sample's own shift; padded frames' results are unspecified."""
    fold = x.shape[1] // FOLD_DIV
    if fold == 0:
        return x
    frames = x.reshape(real.shape[0], real.shape[1], *x.shape[1:])  # (B, T, C, H, W); B, T read from real: dynamic
    moved = frames[:, :, : 2 * fold].masked_fill(~real[:, :, None, None, None], 0.0)  # padding reads as zeros
    zeros = torch.zeros_like(moved[:, :1, :fold])  # (B, 1, fold, H, W): before the first frame, after the last
    past = torch.cat([zeros, moved[:, :-1, :fold]], dim=1)  # frame t <- t - 1, along T only: never another sample
    if mode == "causal":
        return torch.cat([past, frames[:, :, fold:]], dim=2).flatten(0, 1)
    future = torch.cat([moved[:, 1:, fold:], zeros], dim=1)  # frame t <- t + 1
    return torch.cat([past, future, frames[:, :, 2 * fold :]], dim=2).flatten(0, 1)


class ShiftState:
    """What the shifted convolutions of one encoder share: the mode, and the lengths and layout of the
    batch being encoded (set by :func:`frames_of`, None outside it)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.lengths: torch.Tensor | None = None  # (B,) long, on the CPU
        self.layout: FrameLayout | None = None
        # streaming (causal only): each shifted convolution's slice of the previous frame, by id; None: offline
        self.carried: dict[int, torch.Tensor] | None = None
        # an exported graph's padded batch: (B, T) bool, True at real frames (set by padded_frames); None: packed
        self.real: torch.Tensor | None = None

    @contextlib.contextmanager
    def using(self, layout: FrameLayout) -> Iterator[None]:
        """Shift with ``layout`` inside (a chunk's own, or the batch's again when a checkpoint replays)."""
        outer, self.layout = self.layout, layout
        try:
            yield
        finally:
            self.layout = outer

    def chunks(self, size: int) -> list[tuple[int, int, FrameLayout]]:
        """The batch cut into CNN passes of whole samples, at most ``size`` images each (a longer sample
        is a pass of its own): ``(first image, end, its layout)``. A shift never crosses a pass."""
        if self.lengths is None or self.layout is None:
            raise RuntimeError("a temporally shifted CNN needs the batch's lengths to cut it into chunks")
        device = self.layout.previous.device  # the images' (frames_of put the batch's layout there)
        passes, start, count, group = [], 0, 0, []
        for n in self.lengths.tolist():
            if group and count + n > size:
                passes.append((start, start + count, FrameLayout.of(torch.tensor(group), device)))
                start, count, group = start + count, 0, []
            group.append(n)
            count += n
        if group:
            passes.append((start, start + count, FrameLayout.of(torch.tensor(group), device)))
        return passes


class ShiftedConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` whose input is shifted in time first (see :func:`shift_frames`). Made by swapping
    the class of an existing convolution, so its parameters and their names are unchanged."""

    shift_state: ShiftState

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, C, H, W)
        if self.shift_state.carried is not None:
            return super().forward(self._streamed(x))
        if self.shift_state.real is not None:  # (B * T, C, H, W), padded: the form export traces
            return super().forward(shift_padded(x, self.shift_state.real, self.shift_state.mode))
        layout = self.shift_state.layout
        if layout is None:
            raise RuntimeError(
                "a temporally shifted CNN ran without knowing where its samples start and end: "
                "call it inside `with frames_of(encoder, lengths):`"
            )
        if layout.previous.numel() != x.shape[0]:
            raise RuntimeError(f"a temporally shifted CNN got {x.shape[0]} images for a layout of {layout.previous.numel()}")
        return super().forward(shift_frames(x, layout, self.shift_state.mode))

    def _streamed(self, x: torch.Tensor) -> torch.Tensor:
        """One frame of a stream (``(1, C, H, W)``): channels ``[0, C/8)`` from the previous frame's input,
        kept in ``carried`` (zeros at the first frame), and this frame's kept for the next: online TSM."""
        fold = x.shape[1] // FOLD_DIV
        if fold == 0:
            return x
        carried = self.shift_state.carried
        past = carried.get(id(self))
        carried[id(self)] = x[:, :fold].clone()
        return torch.cat([past if past is not None else torch.zeros_like(x[:, :fold]), x[:, fold:]], dim=1)


def _residual_convs(stage: nn.Module, backbone: str) -> list[nn.Conv2d]:
    """The first convolution of each residual branch in ``stage`` (torchvision's ResNet family and
    MobileNetV2); ``tiny_cnn``: the convolution of each of its plain blocks."""
    from torchvision.models.mobilenetv2 import InvertedResidual
    from torchvision.models.resnet import BasicBlock, Bottleneck

    if backbone == "tiny_cnn":
        return [m for m in stage.modules() if isinstance(m, nn.Conv2d)][:1]
    convs = []
    for block in stage.modules():
        if isinstance(block, (BasicBlock, Bottleneck)):
            convs.append(block.conv1)  # its input is x; the identity (or downsample) reads x unshifted
        elif isinstance(block, InvertedResidual) and block.use_res_connect:
            convs.append(next(m for m in block.conv.modules() if isinstance(m, nn.Conv2d)))
    return convs


def supports_shift(backbone: str) -> bool:
    """Whether ``--temporal-shift`` knows where the residual branches of ``backbone`` are."""
    return backbone == "tiny_cnn" or backbone == "mobilenet_v2" or backbone.startswith(("resnet", "resnext", "wide_resnet"))


def install_shift(encoder: nn.Module, *, mode: str, stages: list[nn.Module]) -> int:
    """Shift the residual branches of ``stages`` (the trainable ones) of ``encoder``; returns how many
    convolutions read a shifted input. :class:`ConfigError` when the backbone is not supported or the
    stages hold no residual block."""
    if mode not in SHIFT_MODES:
        raise ConfigError(f"--temporal-shift {mode!r}: use one of {', '.join(SHIFT_MODES)}")
    name = encoder.name
    if not supports_shift(name):
        raise ConfigError(
            f"--temporal-shift {mode}: backbone {name!r} is not supported (the ResNet family, mobilenet_v2 and "
            "tiny_cnn are); use one of them, or --temporal-shift off"
        )
    state = ShiftState(mode)
    convs = [conv for stage in stages for conv in _residual_convs(stage, name)]
    if not convs:
        raise ConfigError(
            f"--temporal-shift {mode}: the trainable stages of {name!r} hold no residual block to shift; "
            "raise --trainable-stages"
        )
    for conv in convs:
        conv.__class__ = ShiftedConv2d
        conv.shift_state = state
    encoder.shift_state = state
    return len(convs)


@contextlib.contextmanager
def _shift_told(encoder: nn.Module, **values) -> Iterator[None]:
    """Set ``values`` on ``encoder``'s :class:`ShiftState` for the body, then unset them (``None``); a no-op
    for an encoder without a shift."""
    state: ShiftState | None = getattr(encoder, "shift_state", None)
    if state is None:
        yield
        return
    for name, value in values.items():
        setattr(state, name, value)
    try:
        yield
    finally:
        for name in values:
            setattr(state, name, None)


@contextlib.contextmanager
def frames_of(encoder: nn.Module, lengths: torch.Tensor | None, device: torch.device | None = None) -> Iterator[None]:
    """Tell ``encoder``'s shifted convolutions where the samples of the next batch lie (``lengths (B,)``);
    a no-op for an encoder without a shift."""
    if not is_shifted(encoder):
        yield
        return
    if lengths is None:
        raise RuntimeError("a temporally shifted CNN needs the batch's lengths")
    with _shift_told(encoder, lengths=lengths.detach().to("cpu", torch.long), layout=FrameLayout.of(lengths, device)):
        yield


@contextlib.contextmanager
def padded_frames(encoder: nn.Module, real: torch.Tensor) -> Iterator[None]:
    """Run ``encoder`` on the ``B * T`` images of a PADDED batch, sample after sample (``real (B, T)`` bool,
    True at real frames): a shift reads along T within each sample, padding as zeros (:func:`shift_padded`).
    What exported graphs use: no lengths are read into Python, so B and T stay dynamic in a traced graph.
    A no-op for an encoder without a shift."""
    with _shift_told(encoder, real=real):
        yield


def carried_convs(encoder: nn.Module) -> list[ShiftedConv2d]:
    """The shifted convolutions of ``encoder`` that carry a slice from frame to frame when it streams (those
    with at least :data:`FOLD_DIV` input channels), in module order: the order of an exported stream graph's
    ``shift_in_*`` / ``shift_out_*``. Empty without a shift."""
    return [m for m in encoder.modules() if isinstance(m, ShiftedConv2d) and m.in_channels // FOLD_DIV > 0]


def check_streamable(encoder: nn.Module) -> None:
    """:class:`ConfigError` when ``encoder``'s shift reads the next frame (bidirectional), which no stream has."""
    state: ShiftState | None = getattr(encoder, "shift_state", None)
    if state is not None and state.mode != "causal":
        raise ConfigError(f"a model trained with --temporal-shift {state.mode} reads the next frame, which a stream does "
                          "not have yet: train with --temporal-shift causal to stream it")


@contextlib.contextmanager
def streamed_frame(encoder: nn.Module, carried: dict[int, torch.Tensor]) -> Iterator[None]:
    """Run ``encoder`` on ONE frame of a stream: a causal shift reads the previous frame's slices from
    ``carried`` and leaves this frame's there (the caller keeps ``carried`` between frames, and empties it to
    start a new sequence). A no-op for an encoder without a shift; a bidirectional shift cannot stream."""
    check_streamable(encoder)
    with _shift_told(encoder, carried=carried):
        yield


def is_shifted(encoder: nn.Module) -> bool:
    """Whether ``encoder`` has a temporal shift (its output for an image depends on its neighbours)."""
    return getattr(encoder, "shift_state", None) is not None
