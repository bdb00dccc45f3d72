"""Export forms of the temporal heads: the same function of ``(features (B, T, F), lengths (B,))`` as the
live head, written with operations every exporter and runtime has (no packed sequences).

Training packs padded batches (:class:`~seqvision.models.temporal.LSTMHead`), which ONNX and TorchScript
graphs cannot carry with a dynamic number of steps. The export forms get the same outputs another way:

* a unidirectional LSTM/GRU runs over the padded batch as it is: step t reads only steps <= t, so the
  outputs at real steps are exact, and the final state of a sample is its output at step ``length - 1``;
* the backward direction of a bidirectional one runs, layer by layer, over each sample reversed WITHIN
  its length (padding stays at the end), so it too starts at the sample's last real step;
* attention, transformer, mean and max heads already mask padding with plain tensor operations and
  export as they are; the temporal difference wraps any of them.

The forms share the live head's parameters (no copy, no drift). :func:`export_form` returns None for a
head it does not know, and ``seqvision export`` then refuses that head with a message naming it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from seqvision.models.temporal import (
    AttentionHead,
    LSTMHead,
    MaxHead,
    MeanHead,
    TemporalDiff,
    TransformerHead,
    masked_mean,
    sinusoids,
)


def reverse_within_lengths(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``(B, T, D)``: each sample's real steps in reverse order, padding left where it is. Its own inverse."""
    steps = torch.arange(x.shape[1], device=x.device)[None, :]  # (1, T)
    last = (lengths.to(x.device) - 1)[:, None]  # (B, 1)
    index = torch.where(steps <= last, last - steps, steps)  # (B, T)
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[2]))


def at_last_step(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``(B, T, D) -> (B, D)``: each sample's value at its last real step."""
    index = (lengths.to(x.device) - 1).view(-1, 1, 1).expand(-1, 1, x.shape[2])
    return x.gather(1, index).squeeze(1)


class MaskedRecurrent(nn.Module):
    """An ``nn.LSTM``/``nn.GRU`` (batch_first) applied to a padded batch without packing:
    ``(B, T, F), lengths (B,) -> (B, T, D)``, exact at every real step (padded steps are unspecified)."""

    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        self.rnn = rnn
        if rnn.bidirectional:  # one unidirectional single-layer module per (layer, direction), sharing weights
            self.cells = nn.ModuleList(
                _single(rnn, layer, suffix) for layer in range(rnn.num_layers) for suffix in ("", "_reverse")
            )

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not self.rnn.bidirectional:
            return self.rnn(x)[0]  # padding sits after each sample's real steps: they never read it
        for layer in range(self.rnn.num_layers):  # dropout between layers is off in evaluation
            forward = self.cells[2 * layer](x)[0]  # (B, T, H)
            backward = reverse_within_lengths(self.cells[2 * layer + 1](reverse_within_lengths(x, lengths))[0], lengths)
            x = torch.cat([forward, backward], dim=-1)  # (B, T, 2H)
        return x


def _single(rnn: nn.RNNBase, layer: int, suffix: str) -> nn.RNNBase:
    """A one-layer unidirectional module of ``rnn``'s type whose parameters ARE those of one layer and
    direction of ``rnn`` (the same Parameter objects)."""
    input_size = rnn.input_size if layer == 0 else rnn.hidden_size * 2
    single = type(rnn)(input_size, rnn.hidden_size, num_layers=1, batch_first=True, bias=rnn.bias)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        if hasattr(rnn, f"{name}_l{layer}{suffix}"):
            setattr(single, f"{name}_l0", getattr(rnn, f"{name}_l{layer}{suffix}"))
    single.flatten_parameters = lambda: None  # shared Parameters: never re-allocate them into one buffer
    return single


class RecurrentExport(nn.Module):
    """Export form of :class:`LSTMHead` / ``GRUHead``: the input projection per step, then the recurrence
    without packing. ``first+last`` readout: the last layer's outputs at the last real step and at step 0;
    ``last``: the final state, i.e. the output at the last real step (forward direction) and at step 0
    (backward direction), as ``h_n`` is."""

    def __init__(self, head: LSTMHead) -> None:
        super().__init__()
        self.input = head.input  # LayerNorm + Linear per step, or Identity
        self.readout = head.readout
        self.recurrent = MaskedRecurrent(head.rnn)
        self.bidirectional = head.rnn.bidirectional
        self.hidden_size = head.rnn.hidden_size
        self.output_size = head.output_size

    def forward(self, features: torch.Tensor, lengths: torch.Tensor, per_step: bool = False) -> torch.Tensor:
        out = self.recurrent(self.input(features), lengths)  # (B, T, D)
        if self.readout == "first+last":  # the outputs at the first and the last real step
            if per_step:
                return torch.cat([out, out[:, :1].expand_as(out)], dim=-1)  # (B, T, 2D)
            return torch.cat([at_last_step(out, lengths), out[:, 0]], dim=-1)  # (B, 2D)
        if per_step:
            return out
        if not self.bidirectional:
            return at_last_step(out, lengths)  # (B, H)
        return torch.cat([at_last_step(out[..., : self.hidden_size], lengths), out[:, 0, self.hidden_size :]], dim=-1)


class AttentionExport(nn.Module):
    """Export form of :class:`AttentionHead`: its recurrent part without packing, the same scoring."""

    def __init__(self, head: AttentionHead) -> None:
        super().__init__()
        self.recurrent = RecurrentExport(head.rnn)
        self.score = head.score
        self.output_size = head.output_size

    def forward(self, features: torch.Tensor, lengths: torch.Tensor, per_step: bool = False) -> torch.Tensor:
        outputs = self.recurrent(features, lengths, per_step=True)  # (B, T, D)
        if per_step:
            return outputs
        mask = real_steps_unchecked(lengths, features.shape[1])
        scores = self.score(outputs).squeeze(-1).masked_fill(~mask, float("-inf"))  # (B, T)
        return torch.bmm(scores.softmax(dim=1).unsqueeze(1), outputs).squeeze(1)  # (B, D)


class TransformerExport(nn.Module):
    """Export form of :class:`TransformerHead`: the same parameters and computation (pre-norm layers,
    key-padding mask), with the attention written out in plain operations. ``nn.MultiheadAttention``
    bakes the traced batch size and number of steps into its reshapes, which breaks dynamic shapes."""

    def __init__(self, head: TransformerHead) -> None:
        super().__init__()
        self.head = head
        self.output_size = head.output_size

    def forward(self, features: torch.Tensor, lengths: torch.Tensor, per_step: bool = False) -> torch.Tensor:
        head, steps = self.head, features.shape[1]
        mask = real_steps_unchecked(lengths, steps)  # (B, T)
        x = head.project(features.masked_fill(~mask[..., None], 0.0))  # (B, T, d_model)
        x = x + sinusoids(steps, head.output_size, device=x.device, dtype=x.dtype)
        keys = torch.zeros_like(mask, dtype=x.dtype).masked_fill(~mask, float("-inf"))[:, None, None, :]  # (B, 1, 1, T)
        for layer in head.encoder.layers:  # norm_first layers: x + attn(norm1(x)), then x + ff(norm2(x))
            x = x + _attention(layer.self_attn, layer.norm1(x), keys)
            x = x + layer.linear2(layer.activation(layer.linear1(layer.norm2(x))))
        out = head.encoder.norm(x)
        return out if per_step else masked_mean(out, mask)


def _attention(attn: nn.MultiheadAttention, x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``nn.MultiheadAttention(x, x, x)`` in evaluation, batch first: ``(B, T, D) -> (B, T, D)``;
    ``keys (B, 1, 1, T)``: 0 for real keys, -inf for padding."""
    heads = attn.num_heads
    q, k, v = nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)  # (B, T, D) each
    q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))  # (B, heads, T, D / heads)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + keys  # (B, heads, T, T)
    out = (scores.softmax(dim=-1) @ v).transpose(1, 2).flatten(2)  # (B, T, D)
    return attn.out_proj(out)


class MeanExport(nn.Module):
    """Export form of :class:`MeanHead`: the same masked mean and running mean, without the range check."""

    def __init__(self, head: MeanHead) -> None:
        super().__init__()
        self.output_size = head.output_size

    def forward(self, features: torch.Tensor, lengths: torch.Tensor, per_step: bool = False) -> torch.Tensor:
        if not per_step:
            return masked_mean(features, real_steps_unchecked(lengths, features.shape[1]))  # (B, F)
        steps = torch.arange(1, features.shape[1] + 1, device=features.device, dtype=features.dtype)
        return features.cumsum(1) / steps[None, :, None]  # (B, T, F)


class MaxExport(nn.Module):
    """Export form of :class:`MaxHead`: the masked max; the running max (per image) as a masked maximum
    over earlier steps, since graphs have no cumulative max."""

    def __init__(self, head: MaxHead) -> None:
        super().__init__()
        self.output_size = head.output_size

    def forward(self, features: torch.Tensor, lengths: torch.Tensor, per_step: bool = False) -> torch.Tensor:
        steps = torch.arange(features.shape[1], device=features.device)
        if not per_step:
            real = steps[None, :] < lengths[:, None]  # (B, T)
            return features.masked_fill(~real[..., None], float("-inf")).amax(dim=1)  # (B, F)
        # step t: the max over steps <= t, as one masked max over a (B, T, T, F) view (any T in one graph)
        earlier = steps[None, :] <= steps[:, None]  # (T, T): [t, s] is True when s <= t
        spread = features[:, None, :, :].masked_fill(~earlier[None, :, :, None], float("-inf"))
        return spread.amax(dim=2)  # (B, T, F)


class DiffExport(nn.Module):
    """Export form of :class:`TemporalDiff` around the export form of its head."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head
        self.output_size = head.output_size

    def forward(self, features: torch.Tensor, lengths: torch.Tensor, per_step: bool = False) -> torch.Tensor:
        previous = torch.cat([features[:, :1], features[:, :-1]], dim=1)  # (B, T, F): x_{t-1}, x_0 first
        return self.head(torch.cat([features, features - previous], dim=-1), lengths, per_step)


def real_steps_unchecked(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """:func:`~seqvision.models.temporal.real_steps` without its range check (inputs are checked before
    they reach an exported graph)."""
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]


def export_form(head: nn.Module) -> nn.Module | None:
    """The head's export form, sharing its parameters; None for a head with no known export form."""
    if isinstance(head, TemporalDiff):
        inner = export_form(head.head)
        return DiffExport(inner) if inner is not None else None
    if isinstance(head, AttentionHead):
        return AttentionExport(head)
    if isinstance(head, LSTMHead):  # GRUHead too
        return RecurrentExport(head)
    if isinstance(head, TransformerHead):
        return TransformerExport(head)
    if isinstance(head, MaxHead):
        return MaxExport(head)
    if isinstance(head, MeanHead):
        return MeanExport(head)
    return None


