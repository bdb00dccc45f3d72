"""Batched feature extraction: every image of a dataset through the frozen CNN once, streamed to the cache.

Large batches across samples through the fast path of :mod:`seqvision.features.encode`, decoding in
parallel with the CNN (a prefetch thread on small CPUs, DataLoader workers elsewhere), and features
written to disk in shards as they come (bounded memory for any dataset size).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from seqvision.data.images import BadImageError, load_image
from seqvision.data.samples import Sample
from seqvision.data.transforms import ClipTransform, Preprocessing
from seqvision.errors import DataError
from seqvision.features.cache import FeatureStore
from seqvision.features.encode import encode_batch, prepare_encoder
from seqvision.models.backbones import ImageEncoder
from seqvision.runtime import inference_dtype, tune_allocator


class _ImageFiles(Dataset):
    """One preprocessed image per item: ``(3, S, S)`` float, or the error that names the file."""

    def __init__(self, paths: list[Path], owners: dict[Path, str], prep: Preprocessing) -> None:
        self.paths = paths
        self.owners = owners  # path -> a sample that uses it, for error messages
        self.transform = ClipTransform(prep)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        path = self.paths[i]
        try:
            return i, self.transform([load_image(path)])[0], None
        except BadImageError as exc:
            return i, None, f"sample {self.owners[path]!r}: image {path}: {exc.reason}"


def _collate(items):
    good = [(i, x) for i, x, err in items if x is not None]
    errors = [(i, err) for i, x, err in items if err is not None]
    images = torch.stack([x for _, x in good]) if good else torch.empty(0)
    return [i for i, _ in good], images, errors


def extraction_workers(device: torch.device) -> int:
    """Decoding processes for extraction. On a CPU with few cores the CNN's threads already hold every
    core, and a worker process only preempts them (measured here, 2 cores, ResNet-18: ~83 images/s with
    one worker vs ~96 with in-process decoding on a prefetch thread). GPUs and big CPUs get workers."""
    cores = os.cpu_count() or 1
    if device.type == "cpu" and cores <= 4:
        return 0
    from seqvision.training.datamodule import default_workers

    return default_workers() if device.type == "cpu" else min(8, max(1, cores - 1))


def prefetch(iterable: Iterable, depth: int = 2) -> Iterator:
    """Yield from ``iterable`` while a background thread produces the next items (decoding releases
    the GIL, so it overlaps the CNN without a second process)."""
    queue: Queue = Queue(maxsize=depth)
    done = object()
    stop = threading.Event()  # set when the consumer leaves early (an error, a break)

    def produce() -> None:
        try:
            for item in iterable:
                if stop.is_set():
                    return
                queue.put(item)
        except BaseException as exc:  # re-raised in the consumer
            queue.put(exc)
        queue.put(done)

    thread = threading.Thread(target=produce, daemon=True, name="seqvision-prefetch")
    thread.start()
    try:
        while True:
            item = queue.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            while not queue.empty():
                queue.get_nowait()
            thread.join(timeout=0.05)


@dataclass
class ExtractStats:
    images: int = 0  # computed in this call
    cached: int = 0  # already in the cache
    seconds: float = 0.0
    dtype: str = "float32"  # compute precision used
    skipped: list[str] = field(default_factory=list)
    first_batch_images: int = 0  # the first batch carries the start-up (loader, compilation)...
    first_batch_seconds: float = 0.0  # ...so the steady state is measured without it

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_images_per_second(self) -> float:
        """Images/s after the first batch: the throughput a long job sees, without start-up costs."""
        rest = self.seconds - self.first_batch_seconds
        return (self.images - self.first_batch_images) / rest if rest > 0 else self.images_per_second


def extract_features(
    samples: list[Sample],
    encoder: ImageEncoder,
    prep: Preprocessing,
    store: FeatureStore,
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    compile: bool = False,
    on_bad_image: str = "error",
    progress: bool = True,
) -> ExtractStats:
    """Compute and cache the features of every image of ``samples`` that the cache lacks.

    Already-cached images are not decoded again; a killed run loses at most the uncommitted shard.
    """
    tune_allocator()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    owners: dict[Path, str] = {}
    for s in samples:
        for f in s.frames:
            owners.setdefault(f.path, s.id)
    missing = store.missing(owners)  # path -> identity
    todo = list(missing)
    stats = ExtractStats(cached=len(owners) - len(todo))
    dtype = inference_dtype(device, precision)
    stats.dtype = str(dtype).removeprefix("torch.")
    if not todo:
        return stats
    net = prepare_encoder(encoder, device, compile=compile)
    workers = extraction_workers(device) if num_workers is None else num_workers
    loader = DataLoader(
        _ImageFiles(todo, owners, prep), batch_size=batch_size, num_workers=workers, collate_fn=_collate,
        pin_memory=device.type == "cuda", persistent_workers=False,
    )
    batches = loader if workers > 0 else prefetch(loader)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="img", desc="extract", dynamic_ncols=True)
    start = time.perf_counter()
    try:
        for indices, images, errors in batches:
            for _, message in errors:
                if on_bad_image != "skip":
                    raise DataError(f"{message}. Fix or remove the file, or pass --on-bad-image skip")
                stats.skipped.append(message)
            if indices:
                features = encode_batch(net, images, dtype, pad_to=batch_size if compile else None)  # (n, F)
                store.add([missing[todo[i]] for i in indices], features)
                stats.images += len(indices)
                if not stats.first_batch_images:
                    stats.first_batch_images, stats.first_batch_seconds = len(indices), time.perf_counter() - start
            if bar is not None:
                bar.update(len(indices) + len(errors))
    finally:
        store.flush()  # whatever was computed is committed, even when a later batch fails
        if bar is not None:
            bar.close()
    stats.seconds = time.perf_counter() - start
    return stats
