"""The three exported graphs of a :class:`~seqvision.models.sequence_model.SequenceModel`, as modules whose
inputs and outputs are plain tensors with a dynamic batch size and a dynamic number of images per sample:

* ``encoder``: ``images (N, 3, S, S)`` normalized float32 -> ``features (N, F)``;
* ``sequence``: ``features (B, T, F)`` zero-padded, ``lengths (B,)`` int64 -> the task's outputs;
* ``model``: ``images (B, T, 3, S, S)`` padded, ``lengths (B,)`` -> the task's outputs, in one graph.

Outputs: ``logits`` and ``probabilities`` (softmax for one class per sample or image, sigmoid for
multi-label) for class tasks, ``values`` for regression; ``(B, K)``, or ``(B, T, K)`` for per-image
tasks, whose rows past a sample's length are padding. In the one-graph ``model`` the CNN also runs on
padded images (a graph cannot drop them); the two halves run it on real images only.
"""

from __future__ import annotations

import torch
from torch import nn

from seqvision.models.sequence_model import SequenceModel


class EncoderGraph(nn.Module):
    """``images (N, 3, S, S) -> features (N, F)``: the CNN and its pooling, without chunking."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.encoder = model.encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.pool_features(self.encoder.trunk(images))


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
        logits = self.task_head(state)  # (B, K) or (B, T, K)
        outputs = [logits]
        if self.activation == "softmax":
            outputs.append(logits.softmax(dim=-1))
        elif self.activation == "sigmoid":
            outputs.append(logits.sigmoid())
        if self.per_step:  # rows past a sample's length: 0, not whatever the head left there
            real = torch.arange(features.shape[1], device=features.device)[None, :] < lengths[:, None]  # (B, T)
            outputs = [o.masked_fill(~real[..., None], 0.0) for o in outputs]
        return tuple(outputs)


class WholeGraph(nn.Module):
    """``images (B, T, 3, S, S), lengths (B,) -> outputs``: the encoder on every (padded) image, then
    the sequence part."""

    def __init__(self, encoder: EncoderGraph, sequence: SequenceGraph) -> None:
        super().__init__()
        self.encoder = encoder
        self.sequence = sequence

    def forward(self, images: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.encoder(images.flatten(0, 1))  # (B * T, F)
        # reshape from the input's own shape: the graph keeps B and T dynamic (unflatten would fix them)
        return self.sequence(features.reshape(images.shape[0], images.shape[1], features.shape[1]), lengths)
