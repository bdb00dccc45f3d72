"""Temporal heads: per-image features ``(B, T, F)`` plus ``lengths (B,)`` -> one vector per sample ``(B, D)``.

The contract every registered head keeps:

* ``__init__(self, input_size: int, *, <options>)``: options are keyword-only, each with a default.
* ``output_size``: ``D``, the SAME number in both modes, so one task-head ``Linear(D, K)`` fits both.
* ``forward(features (B, T, F), lengths (B,) long, per_step=False)``: ``(B, D)``, or with
  ``per_step=True`` ``(B, T, D)``: one output per image. Values at padded positions are unspecified.
* Padding never changes a result: each sample gives the same output alone as inside a batch padded
  to a longer one, in both modes (padded steps are masked, never just zero).

A new head is one class plus ``@register_head("name")``. ``build_temporal_head`` adds the temporal
difference input (``temporal_diff=True``) to any head by wrapping it, see :class:`TemporalDiff`.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqvision.errors import ConfigError

_HEADS: dict[str, type[nn.Module]] = {}

# The recurrent options every ModelConfig carries (and sequence_model passes to whatever head is
# chosen). A head without one of them ignores it instead of failing every run with that head; any
# OTHER option a head does not take is a ConfigError naming the option and the head.
COMMON_OPTIONS = frozenset({"hidden_size", "num_layers", "bidirectional", "dropout", "input_norm", "readout"})
READOUTS = ("first+last", "last")


def register_head(name: str):
    """Class decorator registering a temporal head under ``name``; a duplicate name is refused."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _HEADS:
            raise ValueError(f"temporal head {name!r} is already registered ({_HEADS[name].__name__})")
        _HEADS[name] = cls
        return cls

    return wrap


def available_heads() -> list[str]:
    """The names ``build_temporal_head`` accepts."""
    return sorted(_HEADS)


def head_options(name: str) -> list[str]:
    """The keyword-only options of head ``name`` (read from its ``__init__``, so they cannot drift)."""
    params = inspect.signature(_HEADS[name].__init__).parameters.values()
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY]


def build_temporal_head(name: str, input_size: int, *, temporal_diff: bool = False, **options) -> nn.Module:
    """Build a registered temporal head.

    Args:
        name: one of :func:`available_heads` (``lstm``, ``gru``, ``attention``, ``transformer``, ``mean``, ``max``).
        input_size: ``F``, the per-image feature size.
        temporal_diff: feed each step ``concat(x_t, x_t - x_{t-1})`` instead of ``x_t`` (any head).
        **options: the head's own options. The common recurrent ones (``hidden_size``, ``num_layers``,
            ``bidirectional``, ``dropout``) are dropped for heads that do not take them, so a caller can
            pass one set for every head; any other unknown option raises :class:`ConfigError`.
    """
    if name not in _HEADS:
        raise ConfigError(f"unknown temporal head {name!r}; available: {', '.join(available_heads())}")
    accepted = head_options(name)
    unknown = [k for k in options if k not in accepted and k not in COMMON_OPTIONS]
    if unknown:
        raise ConfigError(
            f"temporal head {name!r} has no option {unknown[0]!r}; its options: {', '.join(accepted) or 'none'}"
        )
    kwargs = {k: v for k, v in options.items() if k in accepted}
    if temporal_diff:
        return TemporalDiff(_HEADS[name](2 * input_size, **kwargs))
    return _HEADS[name](input_size, **kwargs)


# --------------------------------------------------------------------------------------------- masks


def real_steps(lengths: torch.Tensor, steps: int, device: torch.device | None = None) -> torch.Tensor:
    """``(B, T)`` bool: True at each sample's real steps, False at padding."""
    lengths = lengths.to(device)
    if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > steps):
        raise ValueError(f"lengths must lie in [1, {steps}] (the padded length); got {lengths.tolist()}")
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, T, D)`` -> ``(B, D)``: the mean over real steps. ``where`` (not ``*``) so NaN padding cannot leak."""
    total = torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(1)
    return total / mask.sum(1, keepdim=True).to(x.dtype)


# ---------------------------------------------------------------------------------- recurrent heads


def input_projection(input_size: int, hidden_size: int, enabled: bool) -> nn.Module:
    """What a recurrent head reads each step through: ``LayerNorm(F) -> Linear(F, H)``, or nothing.

    CNN features are non-negative, heavy-tailed and wide (1280 for MobileNetV2, 2048 for ResNet-50): fed raw,
    a few large channels drive the gates toward saturation and the head fits slowly (measured on Moving
    Fashion-MNIST in ``benchmarks/accuracy``). Per step, so padding and streaming are unaffected."""
    if not enabled:
        return nn.Identity()
    return nn.Sequential(nn.LayerNorm(input_size), nn.Linear(input_size, hidden_size))


@register_head("lstm")
class LSTMHead(nn.Module):
    """An LSTM over packed sequences; pooled output: see ``readout`` (by default the outputs at the first
    and the last real step).

    Packing means the LSTM stops at each sample's true length, so a sample padded inside a batch of
    longer ones gives exactly the output it gives alone. Bidirectional: both directions concatenated.
    ``input_norm``: each step's features pass :func:`input_projection` first (``False``: raw, as models
    trained before it existed).

    ``readout``: what the task head reads. ``first+last`` (the default): the last layer's outputs at the
    sample's first and last real step, side by side, so "where it started" and "where it ended" are both
    one linear read away (an order task's label is often their difference; with the last state alone the
    LSTM must carry the start through every step: on Moving Fashion-MNIST it found the direction at 0.61
    against 0.96, ``benchmarks/accuracy/results/moving_fashion_mnist.txt``). ``per_step``: at step t, the outputs at step t and at step 0 (what a stream has after frame t).
    ``last``: the final hidden state alone (models trained before ``readout`` existed); ``per_step``: the
    last layer's outputs. ``output_size``: ``hidden_size x (2 if bidirectional) x (2 if first+last)``.
    """

    rnn_type: type[nn.RNNBase] = nn.LSTM

    def __init__(
        self, input_size: int, *, hidden_size: int = 256, num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.0,
        input_norm: bool = True, readout: str = "first+last",
    ) -> None:
        super().__init__()
        if readout not in READOUTS:
            raise ConfigError(f"--readout {readout!r}: use one of {', '.join(READOUTS)}")
        self.readout = readout
        self.input = input_projection(input_size, hidden_size, input_norm)
        self.rnn = self.rnn_type(
            hidden_size if input_norm else input_size,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,  # PyTorch applies it between layers only
        )
        self.output_size = hidden_size * (2 if bidirectional else 1) * (2 if readout == "first+last" else 1)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor, per_step: bool = False) -> torch.Tensor:
        # features: (B, T, F); lengths: (B,), moved to the CPU as pack_padded_sequence requires
        features = self.input(features)  # (B, T, H) with input_norm, else (B, T, F)
        lengths = lengths.cpu()
        if bool((lengths == features.shape[1]).all()):  # no padding (fixed --num-frames): packing changes
            out, h_n = self.rnn(features)  # nothing, and skipping its sort and gathers saves ~4% of a step
        else:
            packed = pack_padded_sequence(features, lengths, batch_first=True, enforce_sorted=False)
            out, h_n = self.rnn(packed)
            if per_step or self.readout == "first+last":  # total_length: keep T when padded beyond the longest
                out = pad_packed_sequence(out, batch_first=True, total_length=features.shape[1])[0]  # (B, T, D)
        if self.readout == "first+last":
            first = out[:, 0]  # (B, D): step 0 is real in every sample
            if per_step:
                return torch.cat([out, first[:, None].expand_as(out)], dim=-1)  # (B, T, 2D)
            last = out.gather(1, (lengths.to(out.device) - 1).view(-1, 1, 1).expand(-1, 1, out.shape[2])).squeeze(1)
            return torch.cat([last, first], dim=-1)  # (B, 2D)
        if per_step:
            return out  # (B, T, D)
        h_n = h_n[0] if isinstance(h_n, tuple) else h_n  # LSTM: (h_n, c_n); h_n: (layers * dirs, B, H)
        if self.rnn.bidirectional:
            return torch.cat([h_n[-2], h_n[-1]], dim=-1)  # (B, 2H): forward and backward of the last layer
        return h_n[-1]  # (B, H)


@register_head("gru")
class GRUHead(LSTMHead):
    """:class:`LSTMHead` with a GRU: same options, same outputs."""

    rnn_type = nn.GRU


@register_head("attention")
class AttentionHead(nn.Module):
    """An LSTM whose outputs are pooled by learned (additive) attention over the real steps.

    ``last_attention`` keeps the weights of the last pooled forward, ``(B, T)``: they sum to 1 over each
    sample's real steps and are 0 on padding (a report can show which images were attended to). It is
    None after a ``per_step`` forward, which returns the LSTM outputs and uses no attention.
    """

    def __init__(
        self, input_size: int, *, hidden_size: int = 256, num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.0,
        input_norm: bool = True,
    ) -> None:
        super().__init__()
        self.rnn = LSTMHead(input_size, hidden_size=hidden_size, num_layers=num_layers, bidirectional=bidirectional,
                            dropout=dropout, input_norm=input_norm, readout="last")  # its outputs, pooled here
        self.output_size = self.rnn.output_size
        # no bias on the last Linear: a constant added to every score cancels in the softmax
        self.score = nn.Sequential(nn.Linear(self.output_size, self.output_size), nn.Tanh(), nn.Linear(self.output_size, 1, bias=False))
        self.last_attention: torch.Tensor | None = None

    def forward(self, features: torch.Tensor, lengths: torch.Tensor, per_step: bool = False) -> torch.Tensor:
        outputs = self.rnn(features, lengths, per_step=True)  # (B, T, D)
        if per_step:
            self.last_attention = None
            return outputs
        mask = real_steps(lengths, features.shape[1], outputs.device)
        scores = self.score(outputs).squeeze(-1).masked_fill(~mask, float("-inf"))  # (B, T)
        weights = scores.softmax(dim=1)  # exactly 0 on padding
        self.last_attention = weights.detach()
        return torch.bmm(weights.unsqueeze(1), outputs).squeeze(1)  # (B, D)


# ------------------------------------------------------------------------------------- transformer


def sinusoids(steps: int, dim: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``(T, dim)`` sinusoidal positional encoding ("Attention is all you need"); any length, no table."""
    position = torch.arange(steps, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    angles = position * freq  # (T, ceil(dim / 2))
    encoding = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)[:, :dim]  # sin, cos interleaved
    return encoding.to(dtype or torch.float32)


@register_head("transformer")
class TransformerHead(nn.Module):
    """A small pre-norm Transformer encoder over the feature sequence; pooled output: the masked mean.

    A Linear projects ``F -> d_model``; sinusoidal positions (computed for any length) keep the order;
    padded steps are masked out as keys. ``output_size = d_model``; ``per_step``: the encoder outputs.
    """

    def __init__(self, input_size: int, *, d_model: int = 256, nhead: int = 4, num_layers: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        if d_model % nhead:
            raise ConfigError(f"temporal head 'transformer': d_model {d_model} must be a multiple of nhead {nhead}")
        self.project = nn.Linear(input_size, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward=4 * d_model, dropout=dropout, batch_first=True, norm_first=True
        )
        # no nested tensors: padded outputs stay dense, and eval gives the same numbers as training's path
        self.encoder = nn.TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.output_size = d_model

    def forward(self, features: torch.Tensor, lengths: torch.Tensor, per_step: bool = False) -> torch.Tensor:
        steps = features.shape[1]
        mask = real_steps(lengths, steps, features.device)  # (B, T)
        # zero the padding first: a masked key still enters attention with weight 0, and 0 * NaN is NaN
        x = self.project(features.masked_fill(~mask[..., None], 0.0))  # (B, T, d_model)
        x = x + sinusoids(steps, self.output_size, device=x.device, dtype=x.dtype)
        out = self.encoder(x, src_key_padding_mask=~mask)  # True = ignore this key
        return out if per_step else masked_mean(out, mask)


# ---------------------------------------------------------------------------------- order-free heads


@register_head("mean")
class MeanHead(nn.Module):
    """Order-free: the mean of the real steps' features. No parameters; ``output_size = F``.

    ``per_step``: the running mean, step t = mean of steps 0..t, what a stream would output after image
    t. Its last real step equals the pooled output, like a unidirectional RNN's (so, unlike the pooled
    output, the per-step outputs depend on the order).
    """

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.output_size = input_size

    def forward(self, features: torch.Tensor, lengths: torch.Tensor, per_step: bool = False) -> torch.Tensor:
        mask = real_steps(lengths, features.shape[1], features.device)
        if not per_step:
            return masked_mean(features, mask)  # (B, F)
        steps = torch.arange(1, features.shape[1] + 1, device=features.device, dtype=features.dtype)
        return features.cumsum(1) / steps[None, :, None]  # (B, T, F): only earlier (real) steps enter


@register_head("max")
class MaxHead(nn.Module):
    """Order-free: the element-wise max over the real steps. No parameters; ``output_size = F``.

    ``per_step``: the running max over steps 0..t (see :class:`MeanHead`).
    """

    def __init__(self, input_size: int) -> None:
        super().__init__()
        self.output_size = input_size

    def forward(self, features: torch.Tensor, lengths: torch.Tensor, per_step: bool = False) -> torch.Tensor:
        if per_step:
            return features.cummax(dim=1).values  # (B, T, F): only earlier (real) steps enter
        mask = real_steps(lengths, features.shape[1], features.device)
        return features.masked_fill(~mask[..., None], float("-inf")).amax(dim=1)  # (B, F)


# ------------------------------------------------------------------------------ temporal difference


class TemporalDiff(nn.Module):
    """Feeds the wrapped head ``concat(x_t, x_t - x_{t-1})`` per step, with ``x_{-1} := x_0`` (first difference 0).

    Step t reads only steps t and t-1, both real when t is, so the wrapped head's masking keeps the
    result padding-free. The wrapped head is built for ``2F`` inputs; ``output_size`` is its own.
    ``last_attention`` passes through (None when the wrapped head has none).
    """

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head
        self.output_size = head.output_size

    @property
    def last_attention(self) -> torch.Tensor | None:
        return getattr(self.head, "last_attention", None)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor, per_step: bool = False) -> torch.Tensor:
        previous = torch.cat([features[:, :1], features[:, :-1]], dim=1)  # (B, T, F): x_{t-1}, x_0 first
        return self.head(torch.cat([features, features - previous], dim=-1), lengths, per_step)
