"""How much memory the image encoder's activations take per image, measured on a probe, not guessed.

Two figures decide whether a batch fits:

- ``inference_bytes``: the peak of one image's activations in a forward pass without gradients. Layers
  free their inputs as they go, so the peak is about the largest layer's input plus output, twice over
  (residual blocks keep their block's input alive beside it).
- ``training_bytes``: what one image's forward pass keeps for the backward pass (the tensors autograd
  saves, counted once each). Frozen layers keep nothing. This is what grows with the images in a batch.

Both are measured in fp32 on the CPU with two probe images at the preprocessing size (mixed precision
keeps roughly half); they are estimates, good to a factor well under 2, meant to choose a chunk size
and to stop a run that cannot fit before it starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from seqvision.models.backbones import ImageEncoder, running_stats_frozen
from seqvision.models.temporal_shift import FrameLayout, is_shifted
from seqvision.runtime import available_memory

PROBE_IMAGES = 2  # BatchNorm in training mode needs more than one value per channel
# inference: images per CNN pass. On a CPU, batches beyond 64 run no faster (benchmarks/extract_speed.py);
# a GPU keeps gaining up to a few hundred
MAX_CHUNK = {"cpu": 64, "cuda": 256}
INFERENCE_SHARE = 4  # a CNN pass may take a quarter of the free memory ...
INFERENCE_CAP = {"cpu": 1 << 30, "cuda": 8 << 30}  # ... and at most this much


@dataclass(frozen=True)
class ActivationProfile:
    """Bytes per image at ``image_size`` (fp32)."""

    image_size: int
    input_bytes: int  # the normalized image: 3 x S x S float32
    inference_bytes: int  # peak activations of a forward pass without gradients
    training_bytes: int  # activations kept for the backward pass (0 when the encoder is frozen)


def _bytes(t: object) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


def activation_profile(encoder: ImageEncoder, *, image_size: int | None = None, training: bool = True) -> ActivationProfile:
    """Measure ``encoder`` on a probe batch, where its parameters are; nothing of it changes (BatchNorm
    statistics are restored, modes and gradients untouched). ``training=False`` skips the training
    figure (a gradient pass: a few seconds for a ResNet-50 on a CPU) and reports it as 0."""
    size = image_size or encoder.preprocessing.image_size
    device = next(encoder.parameters()).device
    probe = torch.rand(PROBE_IMAGES, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)

    largest = [0]  # the largest input + output of any leaf layer

    def leaf_hook(_module: nn.Module, inputs: tuple, output: object) -> None:
        largest[0] = max(largest[0], sum(_bytes(t) for t in inputs) + _bytes(output))

    # a temporal shift runs on the probe as on single-image samples: the same tensors, no neighbour read
    layout = FrameLayout.of(torch.ones(len(probe), dtype=torch.long), probe.device) if is_shifted(encoder) else None
    hooks = [m.register_forward_hook(leaf_hook) for m in encoder.modules() if not list(m.children())]
    was_training = encoder.training
    try:
        encoder.eval()
        with torch.no_grad():
            encoder._encode(probe, layout)
    finally:
        for h in hooks:
            h.remove()
        encoder.train(was_training)

    saved: dict[tuple, int] = {}  # counted once per storage: one tensor saved by two ops is held once
    weights = {p.untyped_storage().data_ptr() for p in encoder.parameters()}  # saved too, but not per image

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            ptr = t.untyped_storage().data_ptr()
            key: tuple = (ptr, t.storage_offset(), tuple(t.shape))
        except (RuntimeError, NotImplementedError):  # a tensor without storage (e.g. a view of a sparse one)
            ptr, key = None, (id(t),)
        if ptr not in weights:
            saved[key] = _bytes(t)
        return t

    kept = 0
    if training and not encoder.fully_frozen:
        encoder.train()
        try:
            # fork_rng: dropout or stochastic depth in the probe must not move a seeded run's random draws
            with torch.random.fork_rng(devices=[]), running_stats_frozen(encoder), torch.enable_grad(), \
                    torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                encoder._encode(probe, layout)
        finally:
            encoder.train(was_training)
        kept = sum(saved.values()) // PROBE_IMAGES
    return ActivationProfile(
        image_size=size,
        input_bytes=3 * size * size * 4,
        inference_bytes=2 * largest[0] // PROBE_IMAGES,
        training_bytes=kept,
    )


def inference_chunk_size(encoder: ImageEncoder, device: torch.device, *, image_size: int | None = None) -> int:
    """Images per CNN pass at inference: as many as fit in a quarter of the device's free memory (at
    most 1 GiB on a CPU, 8 GiB on a GPU), each costing its activations plus the loaded image twice (the
    piece and the batch it is copied into); at least 1, at most 64 on a CPU and 256 on a GPU."""
    profile = activation_profile(encoder, image_size=image_size, training=False)
    kind = "cuda" if device.type == "cuda" else "cpu"
    budget = min(available_memory(device) // INFERENCE_SHARE, INFERENCE_CAP[kind])
    per_image = profile.inference_bytes + 2 * profile.input_bytes
    return max(1, min(MAX_CHUNK[kind], budget // per_image))
