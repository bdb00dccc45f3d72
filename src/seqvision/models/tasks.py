"""The task head: dropout -> Linear. What its outputs mean (loss, metrics, predictions) is the task's:
:mod:`seqvision.tasks`."""

from __future__ import annotations

import torch
from torch import nn


class TaskHead(nn.Module):
    """``(B, D) -> (B, K)``: class logits (classification) or K numbers (regression)."""

    def __init__(self, input_size: int, num_outputs: int, *, dropout: float = 0.2) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(input_size, num_outputs)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(state))
