"""The composite: image encoder -> temporal head -> task head. Plain PyTorch, usable without Lightning."""

from __future__ import annotations

import logging

import torch
from torch import nn

from seqvision.errors import ConfigError
from seqvision.models.backbones import ImageEncoder, build_backbone
from seqvision.models.tasks import TaskHead
from seqvision.models.temporal import available_heads, build_temporal_head, head_options, real_steps
from seqvision.models.temporal_shift import frames_of, install_shift

log = logging.getLogger("seqvision")


def pad_features(features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``(N, F)`` flat per-image features -> ``(B, T_max, F)`` zero-padded per sample."""
    chunks = torch.split(features, lengths.tolist())
    return nn.utils.rnn.pad_sequence(chunks, batch_first=True)


class SequenceModel(nn.Module):
    """``images (N, 3, H, W)`` with ``lengths (B,)`` -> outputs ``(B, K)``.

    The CNN runs ONCE over all ``N = lengths.sum()`` real images of the batch (never one image per
    forward pass, never a padded image); features are then split per sample and padded for the head.
    """

    def __init__(self, encoder: ImageEncoder, temporal_head: nn.Module, task_head: TaskHead, *, per_step: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.temporal_head = temporal_head
        self.task_head = task_head
        self.per_step = per_step  # one output per image (sequence labelling): (N, K) instead of (B, K)

    def forward(self, images: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        with frames_of(self.encoder, lengths, images.device):  # a temporal shift's sample boundaries
            features = self.encoder(images)  # (N, F)
        return self.forward_features(features, lengths)

    def forward_features(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The temporal and task heads alone, on ``(N, F)`` features from a live CNN or a feature cache."""
        padded = pad_features(features, lengths)  # (B, T, F)
        if not self.per_step:
            state = self.temporal_head(padded, lengths)  # (B, D)
            return self.task_head(state)  # (B, K)
        states = self.temporal_head(padded, lengths, per_step=True)  # (B, T, D)
        mask = real_steps(lengths, padded.shape[1], states.device)  # (B, T)
        return self.task_head(states[mask])  # (N, K): real images only, sample after sample


def build_sequence_model(
    num_outputs: int,
    *,
    backbone: str = "resnet18",
    weights: str = "imagenet",
    pool: str = "avg",
    drop_stages: int = 0,
    freeze: bool = False,
    trainable_stages: int | None = None,
    freeze_bn: bool | None = None,
    chunk_size: int | None = None,
    checkpointing: bool = False,
    head: str = "lstm",
    temporal_diff: bool = False,
    temporal_shift: str = "off",
    hidden_size: int = 256,
    input_norm: bool = True,
    readout: str = "first+last",
    num_layers: int = 1,
    d_model: int = 256,
    nhead: int = 4,
    bidirectional: bool = False,
    lstm_dropout: float = 0.0,
    dropout: float = 0.2,
    per_step: bool = False,
) -> SequenceModel:
    """Image encoder -> temporal head -> task head with ``num_outputs`` outputs (one per image with
    ``per_step``). The keywords are :class:`seqvision.config.ModelConfig`'s fields, whose
    ``build_model`` passes them; head-specific ones (``d_model``, ``nhead``) go to the heads that take them.
    ``freeze_bn``: BatchNorm in evaluation mode while the backbone learns; None (auto) turns it on for loaded
    weights whose BatchNorm is folded. ``temporal_shift``: ``bidirectional`` or ``causal`` shifts the residual
    blocks of the stages that learn (:mod:`seqvision.models.temporal_shift`)."""
    encoder = build_backbone(backbone, weights=weights, pool=pool, drop_stages=drop_stages)
    encoder.chunk_size = chunk_size
    encoder.checkpointing = checkpointing
    if freeze:
        encoder.set_trainable("none")
    elif trainable_stages:
        encoder.set_trainable(trainable_stages)
    if freeze_bn is None:  # auto: loaded weights whose BatchNorm is folded must not normalize by batch
        freeze_bn = not freeze and weights != "none" and encoder.has_folded_norm()
        if freeze_bn:
            log.warning(
                "the backbone's BatchNorm is folded into its convolutions (running mean 0, variance 1 in every layer, "
                "as in weights converted from TFLite): it stays in evaluation mode while fine-tuning (--no-freeze-bn to "
                "train it)"
            )
    encoder.set_frozen_norm(bool(freeze_bn))
    if temporal_shift != "off":
        if freeze:
            raise ConfigError(f"--temporal-shift {temporal_shift} shifts the stages that learn: not with --freeze "
                              "(use --trainable-stages K)")
        install_shift(encoder, mode=temporal_shift, stages=encoder.stages[-trainable_stages:] if trainable_stages else encoder.stages)
    options = dict(hidden_size=hidden_size, num_layers=num_layers, bidirectional=bidirectional, dropout=lstm_dropout,
                   input_norm=input_norm, readout=readout)
    accepted = head_options(head) if head in available_heads() else []  # a head refuses an option it lacks
    options.update({k: v for k, v in (("d_model", d_model), ("nhead", nhead)) if k in accepted})
    temporal = build_temporal_head(head, encoder.num_features, temporal_diff=temporal_diff, **options)
    return SequenceModel(encoder, temporal, TaskHead(temporal.output_size, num_outputs, dropout=dropout), per_step=per_step)
