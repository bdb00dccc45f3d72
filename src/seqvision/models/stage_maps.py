"""Fine-tuning the last stages at cached speed: the frozen stages' output, computed once, stands in for
the images.

With ``--trainable-stages K`` every stage before the last K is frozen (no gradients, BatchNorm in
evaluation mode), so for a given image it computes the same feature map every epoch. A
:class:`StageCut` splits the encoder's trunk there: :class:`FrozenStages` turns images into those maps,
flattened to one row per image so the feature cache can hold them (``(N, C*h*w)``, e.g. 320x7x7 for
MobileNetV2 at 224 px); :meth:`StageCut.features` runs the last K stages and the pooling on them,
which is what the encoder computes from the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from seqvision.errors import ConfigError

MAPS_PREFIX = "maps@"  # a feature-cache key whose "pool" starts with this holds stage maps, not vectors


@dataclass(frozen=True)
class StageCut:
    """Where the trunk (an ``nn.Sequential``) is cut: modules ``[0, index)`` are frozen, the rest learn.
    ``shape``: the frozen part's output ``(C, h, w)`` at the run's image size."""

    index: int
    shape: tuple[int, int, int]

    @classmethod
    def of(cls, encoder: nn.Module, trainable_stages: int) -> "StageCut":
        """The cut before the last ``trainable_stages`` stages; :class:`ConfigError` when the trunk cannot
        be cut there (its stages are not consecutive children of a sequential trunk)."""
        trunk, stages = encoder.trunk, encoder.stages
        if not isinstance(trunk, nn.Sequential) or not 1 <= trainable_stages <= len(stages):
            raise ConfigError(f"backbone {encoder.name!r}: its frozen stages cannot be cached as feature maps")
        children = list(trunk.children())
        first = stages[-trainable_stages]
        if not any(first is c for c in children):
            raise ConfigError(f"backbone {encoder.name!r}: its frozen stages cannot be cached as feature maps")
        index = next(i for i, c in enumerate(children) if c is first)
        size = encoder.preprocessing.image_size
        with torch.no_grad():
            was = trunk.training
            trunk.eval()
            shape = tuple(trunk[:index](torch.zeros(1, 3, size, size)).shape[1:])
            trunk.train(was)
        if len(shape) != 3:
            raise ConfigError(f"backbone {encoder.name!r}: its frozen stages do not give a spatial map ({shape})")
        return cls(index, shape)

    @property
    def key(self) -> str:
        """The cache key's ``pool`` for these maps (another cut point is another key)."""
        return f"{MAPS_PREFIX}{self.index}:{'x'.join(map(str, self.shape))}"

    @property
    def row_size(self) -> int:
        c, h, w = self.shape
        return c * h * w

    def features(self, encoder: nn.Module, maps: torch.Tensor) -> torch.Tensor:
        """``(N, C*h*w)`` cached maps -> ``(N, F)``: the last stages and the pooling, as the encoder runs them."""
        x = maps.to(next(encoder.parameters()).dtype).unflatten(1, self.shape)  # (N, C, h, w)
        x = x.contiguous(memory_format=torch.channels_last)
        return encoder.pool_features(encoder.trunk[self.index :](x))


class FrozenStages(nn.Module):
    """``images (N, 3, S, S) -> (N, C*h*w)``: the frozen stages of ``encoder``, flattened per image.
    Carries what a feature-cache key and the extraction read from an encoder (``name``, ``pool``,
    ``preprocessing``); its weights fingerprint covers the frozen stages only."""

    def __init__(self, encoder: nn.Module, cut: StageCut) -> None:
        super().__init__()
        self.stages = encoder.trunk[: cut.index]
        self.name = encoder.name
        self.pool = cut.key
        self.preprocessing = encoder.preprocessing
        self.num_features = cut.row_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.stages(images.contiguous(memory_format=torch.channels_last)).flatten(1)
