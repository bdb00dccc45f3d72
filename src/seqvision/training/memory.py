"""Before the first step: does the largest batch fit? If not, chunk with checkpointing, or stop clearly.

A live CNN holds, for a training batch of ``N`` images, the ``N`` loaded images and what autograd saves
of each image's forward pass (:func:`seqvision.models.memory.activation_profile`). ``N`` is largest for
the ``batch_size`` longest samples (shuffling can put them together). When that estimate exceeds the
budget, the CNN can run in chunks whose activations are recomputed in the backward pass
(``--chunk-size C --checkpointing``: the same gradients, about a third more compute): then only one
chunk's activations are held. When even one image per chunk does not fit, the run stops before it
starts, with one line that says which sample, how many images and which flags fix it.

BatchNorm in training mode normalizes a chunk by the chunk's statistics, not the batch's: chunking
would make the maths depend on the memory free at launch. So a run that chunks on its own holds
BatchNorm in evaluation mode (its running statistics, as ``--freeze-bn``; recorded in the run's
config) and says so in its one line; the run goes on, and its maths no longer depend on the chunk.
With ``--no-freeze-bn`` (BatchNorm asked to train) it stops instead, naming the flags. An explicit
``--chunk-size`` keeps per-chunk statistics, and says so in one line.

A frozen backbone on the feature cache trains on features only: nothing of this applies.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import torch
from torch import nn

from seqvision.config import RunConfig
from seqvision.data.samples import Sample
from seqvision.data.video import probe_video
from seqvision.errors import ConfigError
from seqvision.models.backbones import ImageEncoder
from seqvision.models.memory import activation_profile
from seqvision.models.temporal_shift import is_shifted
from seqvision.runtime import available_memory

log = logging.getLogger("seqvision")

GB = 1 << 30
CPU_SHARE = 0.5  # of the available RAM: the loader workers, the optimizer and the OS need the rest
GPU_SHARE = 0.9  # of a GPU's free memory
CHUNK_CHOICES = (64, 32, 16, 8, 4, 2, 1)


@dataclass(frozen=True)
class LargestBatch:
    images: int  # in the batch of the ``batch_size`` longest samples
    sample: str  # the longest sample
    sample_images: int  # its images (after sampling)
    samples: int  # how many samples the batch holds


def largest_batch(samples: list[Sample], cfg: RunConfig, *, train: bool = True) -> LargestBatch:
    """The batch with the most images that training (or validation) can draw, after frame sampling."""
    policy = cfg.data.sampling_policy(train=train)
    lengths = []
    for s in samples:
        n, fps = len(s.frames), None
        if s.video is not None:  # headers only; already read (and cached) when the data was filtered
            info = probe_video(s.video.path, s.video.start, s.video.end)
            n, fps = info.num_frames, info.fps
        # the clip length does not depend on the draw: any generator gives the length of every draw
        clips = policy.clips_for(n, train=train, rng=random.Random(0), source_fps=fps)
        lengths.append((sum(len(c) for c in clips), s.id))
    lengths.sort(reverse=True)
    if train and cfg.train.balanced_sampler and lengths:  # drawn with replacement: the longest may fill a batch
        lengths = [lengths[0]] * cfg.train.batch_size
    top = lengths[: cfg.train.batch_size]
    return LargestBatch(sum(n for n, _ in top), top[0][1] if top else "", top[0][0] if top else 0, len(top))


def memory_budget(cfg: RunConfig, device: torch.device) -> int:
    """Bytes: ``--memory-budget`` GB, else a share of what is free on the training device."""
    if cfg.train.memory_budget is not None:
        return int(cfg.train.memory_budget * GB)
    share = GPU_SHARE if device.type == "cuda" else CPU_SHARE
    return int(available_memory(device) * share)


def plan_training_memory(
    cfg: RunConfig, encoder: ImageEncoder, splits: dict[str, list[Sample]], *, device: torch.device, num_workers: int,
) -> str | None:
    """Check the largest training batch (and validation batch) against the budget, before anything is written.

    Fits: returns None. Does not fit, but would with the CNN in checkpointed chunks (or, for a frozen
    CNN run live, in chunks): sets ``encoder`` to chunk (not ``cfg``: prediction later chooses its own
    chunk for its own memory), and returns the sentence that says so (the caller logs it once). Cannot fit: raises :class:`ConfigError` naming the longest sample,
    the batch's images, the estimate and the flags that fix it.
    """
    batches = {"training": largest_batch(splits["train"], cfg, train=True)}
    if splits.get("val"):  # validation runs without gradients, but its batch may be longer (multi-clip)
        batches["validation"] = largest_batch(splits["val"], cfg, train=False)
    if batches["training"].images == 0:
        return None
    profile = activation_profile(encoder)  # at the run's image size: the encoder carries the run's preprocessing
    trainable = not encoder.fully_frozen
    norms = trainable and training_norms(encoder)
    if norms and chunk_splits(cfg.model.chunk_size, batches["training"].images):
        log.warning(
            "--chunk-size %d: BatchNorm normalizes each chunk of at most %d images by that chunk's statistics, not the "
            "whole batch's (--freeze-bn keeps its running statistics)", cfg.model.chunk_size, cfg.model.chunk_size,
        )
    half = 2 if cfg.train.precision in ("bf16-mixed", "16-mixed") else 1  # autocast keeps activations in 16 bits
    loaded = 1 + 2 * num_workers  # the batch in use, and two waiting per loader worker
    m = cfg.model

    shifted = is_shifted(encoder)

    def need(kind: str, chunk: int | None, checkpointing: bool) -> int:
        """Bytes of the largest ``kind`` batch: its loaded images and the activations held at once: every
        image's, unless chunks run one after another without keeping theirs for a backward pass."""
        batch = batches[kind]
        grads = kind == "training" and trainable
        per_image = (profile.training_bytes if grads else profile.inference_bytes) // half
        held = min(batch.images, chunk) if chunk and (checkpointing or not grads) else batch.images
        if shifted:  # a temporal shift's chunk holds whole samples: the longest one may exceed the chunk
            held = max(held, min(batch.images, batch.sample_images))
        return batch.images * profile.input_bytes * loaded + held * per_image

    def worst(chunk: int | None, checkpointing: bool) -> tuple[int, str]:
        return max((need(kind, chunk, checkpointing), kind) for kind in batches)

    budget = memory_budget(cfg, device)
    estimate, kind = worst(m.chunk_size, m.checkpointing)
    if estimate <= budget:
        return None
    batch = batches[kind]
    what = (
        f"the largest {kind} batch ({batch.images} images: the {batch.samples} longest samples, the longest "
        f"{batch.sample!r} with {batch.sample_images}) needs about {size_text(estimate)} for its images and CNN "
        f"activations (an estimate), over the {size_text(budget)} budget (--memory-budget)"
    )
    if not (m.chunk_size and (m.checkpointing or not trainable)):  # not chunked yet: the largest chunk that fits
        for chunk in CHUNK_CHOICES:
            if worst(chunk, trainable)[0] <= budget:
                held = ""
                if norms and not m.chunk_size and chunk_splits(chunk, batches["training"].images):  # automatic
                    held = _hold_norms(cfg, encoder, chunk, what)
                encoder.chunk_size = chunk
                if trainable:
                    encoder.checkpointing = True
                    how = f"--chunk-size {chunk} --checkpointing (each chunk's activations are recomputed in the backward pass: same gradients, slower)"
                else:
                    how = f"--chunk-size {chunk} (the frozen CNN keeps nothing for the backward pass)"
                return f"{what}: training with {how}{held}"
    chunked = f"a smaller --chunk-size (now {m.chunk_size}), " if m.chunk_size and m.chunk_size > 1 else ""
    raise ConfigError(
        f"{what}, even with the CNN in checkpointed chunks. Fix it with fewer images per sample (--num-frames N), "
        f"a smaller --batch-size, {chunked}a smaller --image-size, or a larger --memory-budget on a machine that has it"
    )


def training_norms(encoder: ImageEncoder) -> bool:
    """Whether any BatchNorm layer of ``encoder`` normalizes by batch statistics while it trains."""
    was = encoder.training
    encoder.train(True)  # the encoder keeps its frozen stages and frozen BatchNorm in evaluation mode
    found = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in encoder.modules())
    encoder.train(was)
    return found


def chunk_splits(chunk: int | None, images: int) -> bool:
    """Whether a chunk of ``chunk`` images splits a batch of ``images``."""
    return bool(chunk) and chunk < images


def _hold_norms(cfg: RunConfig, encoder: ImageEncoder, chunk: int, what: str) -> str:
    """An automatic chunk with BatchNorm training: BatchNorm held on its running statistics for the run
    (and in its config, so the saved run says so), or a stop when the user asked it to train."""
    if cfg.model.freeze_bn is False:
        raise ConfigError(
            f"{what}; chunks of {chunk} images would each be normalized by their own BatchNorm statistics, which "
            "--no-freeze-bn asks to train on whole batches. Choose: --chunk-size C (per-chunk statistics), a smaller "
            "--batch-size or --num-frames so the batch fits whole, --freeze-bn, or a larger --memory-budget"
        )
    encoder.set_frozen_norm(True)
    cfg.model.freeze_bn = True
    return ("; BatchNorm held in evaluation mode for this run (as --freeze-bn: chunks would each be normalized by their "
            "own statistics); for BatchNorm that trains, a smaller --batch-size or --num-frames, or --chunk-size C to "
            "accept per-chunk statistics")


def size_text(n: int) -> str:
    """Bytes as ``512 KB``, ``7.6 MB`` or ``1.2 GB``."""
    for unit, scale in (("GB", GB), ("MB", 1 << 20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{max(1, round(n / 1024))} KB"
