"""The composite: image encoder -> temporal head -> task head. Plain PyTorch, usable without Lightning."""

from __future__ import annotations

import torch
from torch import nn

from seqvision.config import ModelConfig
from seqvision.models.backbones import ImageEncoder, build_backbone
from seqvision.models.tasks import TaskHead
from seqvision.models.temporal import available_heads, build_temporal_head, head_options, real_steps


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
    cfg: ModelConfig, num_outputs: int, *, weights: str | None = None, per_step: bool = False
) -> SequenceModel:
    """Build the model from its config; ``weights`` overrides ``cfg.weights`` (``none`` when a checkpoint
    will supply every parameter anyway, so nothing is downloaded)."""
    encoder = build_backbone(cfg.backbone, weights=weights or cfg.weights, pool=cfg.pool)
    encoder.chunk_size = cfg.chunk_size
    encoder.checkpointing = cfg.checkpointing
    if cfg.freeze:
        encoder.set_trainable("none")
    elif cfg.trainable_stages:
        encoder.set_trainable(cfg.trainable_stages)
    options = dict(hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, bidirectional=cfg.bidirectional, dropout=cfg.lstm_dropout)
    # head-specific config options go to the heads that take them (a head refuses an option it lacks)
    accepted = head_options(cfg.head) if cfg.head in available_heads() else []
    options.update({k: v for k, v in (("d_model", cfg.d_model), ("nhead", cfg.nhead)) if k in accepted})
    head = build_temporal_head(cfg.head, encoder.num_features, temporal_diff=cfg.temporal_diff, **options)
    return SequenceModel(encoder, head, TaskHead(head.output_size, num_outputs, dropout=cfg.dropout), per_step=per_step)
