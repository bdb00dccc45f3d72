"""Task heads and losses: dropout -> Linear, and the loss that fits the task."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TaskHead(nn.Module):
    """``(B, D) -> (B, K)``: class logits (classification) or K numbers (regression)."""

    def __init__(self, input_size: int, num_outputs: int, *, dropout: float = 0.2) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(input_size, num_outputs)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(state))


class TaskLoss(nn.Module):
    """Cross-entropy (label smoothing, class weights), sigmoid + BCE (multi-label, positive weights) or
    MSE / L1 over every regression target; per-image tasks use the same losses over the real images."""

    def __init__(
        self, task: str, *, label_smoothing: float = 0.0, class_weights: torch.Tensor | None = None, loss: str = "mse"
    ) -> None:
        super().__init__()
        self.task = task
        self.label_smoothing = label_smoothing
        self.loss = loss
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``outputs (B or N, K)`` against class indices, multi-hot ``(B, K)`` or values ``(B or N, K)``."""
        outputs = outputs.float()  # losses in fp32 under mixed precision
        if self.task in ("classification", "frame_classification"):
            return F.cross_entropy(outputs, targets, weight=self.class_weights, label_smoothing=self.label_smoothing)
        if self.task == "multilabel":  # class_weights act as per-label positive weights here
            return F.binary_cross_entropy_with_logits(outputs, targets, pos_weight=self.class_weights)
        if self.loss == "l1":
            return F.l1_loss(outputs, targets)
        return F.mse_loss(outputs, targets)
