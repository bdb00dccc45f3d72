"""The three exported graphs of a :class:`~seqvision.models.sequence_model.SequenceModel`, as modules whose
inputs and outputs are plain tensors with a dynamic batch size and a dynamic number of images per sample:

* ``encoder``: ``images (N, 3, S, S)`` normalized float32 -> ``features (N, F)``;
* ``sequence``: ``features (B, T, F)`` zero-padded, ``lengths (B,)`` int64 -> the task's outputs;
* ``model``: ``images (B, T, 3, S, S)`` padded, ``lengths (B,)`` -> the task's outputs, in one graph.

Outputs: ``logits`` and ``probabilities`` (softmax for one class per sample or image, sigmoid for
multi-label) for class tasks, ``values`` for regression; ``(B, K)``, or ``(B, T, K)`` for per-image
tasks, whose rows past a sample's length are padding. In the one-graph ``model`` the CNN also runs on
padded images (a graph cannot drop them); the two halves run it on real images only.

A model trained with ``--temporal-shift``: its CNN reads each image's neighbours, so no graph can encode
one image alone. The ``encoder`` graph then takes whole padded samples,
``images (B, T, 3, S, S), lengths (B,) -> features (B, T, F)`` (rows past a sample's length are 0), and
shifts along T inside each sample, padding read as zeros (:func:`~seqvision.models.temporal_shift.shift_padded`);
``model`` is that encoder followed by ``sequence``, which is unchanged. Its CNN runs on padded images too.
The frame-by-frame form of a causal shift is :mod:`seqvision.export.stream_graph`.
"""

from __future__ import annotations

import torch
from torch import nn

from seqvision.models.sequence_model import SequenceModel
from seqvision.models.temporal_shift import padded_frames


def with_activation(logits: torch.Tensor, activation: str | None) -> list[torch.Tensor]:
    """The graphs' outputs: ``[logits, probabilities]`` (softmax or sigmoid), or ``[values]`` for regression."""
    if activation == "softmax":
        return [logits, logits.softmax(dim=-1)]
    if activation == "sigmoid":
        return [logits, logits.sigmoid()]
    return [logits]


class EncoderGraph(nn.Module):
    """``images (N, 3, S, S) -> features (N, F)``: the CNN and its pooling, without chunking."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.encoder = model.encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.pool_features(self.encoder.trunk(images))


class ShiftedEncoderGraph(nn.Module):
    """``images (B, T, 3, S, S), lengths (B,) -> features (B, T, F)``: a temporally shifted CNN on whole
    padded samples (the shift along T, within each sample); rows past a sample's length are 0."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.encoder = model.encoder

    def forward(self, images: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        real = torch.arange(images.shape[1], device=images.device)[None, :] < lengths[:, None]  # (B, T)
        with padded_frames(self.encoder, real):  # read by each ShiftedConv2d while the trunk runs
            features = self.encoder.pool_features(self.encoder.trunk(images.flatten(0, 1)))  # (B * T, F)
        features = features.reshape(images.shape[0], images.shape[1], features.shape[1])  # (B, T, F)
        return features.masked_fill(~real[..., None], 0.0)  # padding: 0, as the sequence graph is fed


class SequenceGraph(nn.Module):
    """``features (B, T, F), lengths (B,) -> outputs``: the temporal head (its export form) and the task head."""

    def __init__(self, model: SequenceModel, temporal: nn.Module, activation: str | None) -> None:
        super().__init__()
        self.temporal = temporal
        self.task_head = model.task_head
        self.per_step = model.per_step
        self.activation = activation  # softmax | sigmoid | None (regression)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state = self.temporal(features, lengths, per_step=self.per_step)  # (B, D) or (B, T, D)
        outputs = with_activation(self.task_head(state), self.activation)  # (B, K) or (B, T, K) each
        if self.per_step:  # rows past a sample's length: 0, not whatever the head left there
            real = torch.arange(features.shape[1], device=features.device)[None, :] < lengths[:, None]  # (B, T)
            outputs = [o.masked_fill(~real[..., None], 0.0) for o in outputs]
        return tuple(outputs)


class WholeGraph(nn.Module):
    """``images (B, T, 3, S, S), lengths (B,) -> outputs``: the encoder on every (padded) image, then
    the sequence part."""

    def __init__(self, encoder: EncoderGraph | ShiftedEncoderGraph, sequence: SequenceGraph) -> None:
        super().__init__()
        self.encoder = encoder
        self.sequence = sequence

    def forward(self, images: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if isinstance(self.encoder, ShiftedEncoderGraph):  # whole samples in, (B, T, F) out
            return self.sequence(self.encoder(images, lengths), lengths)
        features = self.encoder(images.flatten(0, 1))  # (B * T, F)
        # reshape from the input's own shape: the graph keeps B and T dynamic (unflatten would fix them)
        return self.sequence(features.reshape(images.shape[0], images.shape[1], features.shape[1]), lengths)
