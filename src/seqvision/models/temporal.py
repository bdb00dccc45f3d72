"""Temporal heads: ``(B, T, F)`` plus lengths -> ``(B, D)``. Padding never changes a result."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence


class LSTMHead(nn.Module):
    """An LSTM over packed sequences; returns the final hidden state of the last layer.

    Packing means the LSTM stops at each sample's true length, so a sample padded inside a batch of
    longer ones gives exactly the output it gives alone. Bidirectional: both directions concatenated.
    """

    def __init__(
        self, input_size: int, *, hidden_size: int = 256, num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.lstm = nn.LSTM(
            input_size,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.output_size = hidden_size * (2 if bidirectional else 1)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # features: (B, T, F); lengths: (B,) on CPU as pack_padded_sequence requires
        packed = pack_padded_sequence(features, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)  # h_n: (layers * directions, B, H), in the caller's batch order
        if self.lstm.bidirectional:
            return torch.cat([h_n[-2], h_n[-1]], dim=-1)  # (B, 2H): forward and backward of the last layer
        return h_n[-1]  # (B, H)


def build_temporal_head(name: str, input_size: int, **options) -> nn.Module:
    """The temporal head registry (the core ships ``lstm``)."""
    heads = {"lstm": LSTMHead}
    if name not in heads:
        from seqvision.errors import ConfigError

        raise ConfigError(f"unknown temporal head {name!r}; available: {', '.join(heads)}")
    return heads[name](input_size, **options)
