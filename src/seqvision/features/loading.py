"""Loading for extraction: images and video frames decoded and transformed in parallel into large batches
of rows (threads between CNN batches on small CPUs, DataLoader workers elsewhere), with errors and notes
travelling beside them."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from queue import Queue
from typing import Iterable, Iterator

import torch
from torch.utils.data import Dataset

from seqvision.data.images import load_image
from seqvision.data.remote import shown
from seqvision.data.transforms import (
    ClipTransform,
    Preprocessing,
)
from seqvision.data.video import read_frames
from seqvision.errors import BadFileError, DataError
from seqvision.runtime import (
    default_workers,
)

log = logging.getLogger("seqvision")


# What both loaders yield: (identities of the rows, (n, 3, S, S) images, errors, notes)
Work = tuple[list[str], torch.Tensor, list[str], list[str]]


class ImageFiles(Dataset):
    """One preprocessed image per item: ``(3, S, S)`` float, or the error that names the file."""

    def __init__(self, todo: dict[Path, str], owners: dict[Path, str], prep: Preprocessing) -> None:
        self.paths = list(todo)
        self.identities = todo  # path -> the identity its row is committed under
        self.owners = owners  # path -> a sample that uses it, for error messages
        self.transform = ClipTransform(prep)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor | None, str | None]:
        return self.load(i)

    def load(self, i: int, out: torch.Tensor | None = None) -> tuple[str, torch.Tensor | None, str | None]:
        """Item ``i``: its identity, its row (written into ``out``, a ``(3, S, S)`` row of a batch, when
        given) and None; or its identity, None and the error naming the file."""
        path = self.paths[i]
        try:
            image = load_image(path, decode_size=self.transform.decode_size)
            return self.identities[path], self.transform([image], out=None if out is None else out[None])[0], None
        except BadFileError as exc:
            return self.identities[path], None, f"sample {self.owners[path]!r}: image {shown(path)}: {exc.reason}"


class ThreadedBatches:
    """Image batches decoded and preprocessed by a few threads *between* CNN batches (small CPUs).

    Each thread takes its share of the batch, image by image (one image at a time stays in the CPU's
    cache, which a stacked batch transform does not), and writes the rows straight into a batch in
    ``memory_format``, the layout the CNN reads (:func:`~seqvision.features.encode.input_layout`).
    Decoding, resize and normalize release the GIL, so the threads run in parallel. See
    :func:`extraction_workers` for why small CPUs decode in-process. The rows equal
    :class:`ImageFiles`' (the same per-image transform).
    """

    def __init__(
        self, todo: dict[Path, str], owners: dict[Path, str], prep: Preprocessing, batch_size: int, threads: int,
        memory_format: torch.memory_format = torch.channels_last,
    ) -> None:
        self.files = ImageFiles(todo, owners, prep)
        self.size = prep.image_size
        self.batch_size = batch_size
        self.threads = max(1, threads)
        self.memory_format = memory_format

    def _fill(self, indices: range, out: torch.Tensor, first: int) -> list[tuple[int, str, str | None]]:
        done = []
        # inference mode is per thread: a batch made under a caller's torch.inference_mode() is an
        # inference tensor, which these threads may write in place only inside inference mode themselves
        with torch.inference_mode(torch.is_inference(out)):
            for i in indices:
                identity, _, error = self.files.load(i, out[i - first])  # the row is written in place
                done.append((i - first, identity, error))
        return done

    def __iter__(self) -> Iterator[Work]:
        from concurrent.futures import ThreadPoolExecutor

        # the pool lives as long as the iteration: a consumer that stops early (an error) closes it
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="seqvision-decode", initializer=_one_intra_op_thread)
        try:
            for first in range(0, len(self.files), self.batch_size):
                n = min(self.batch_size, len(self.files) - first)
                out = torch.empty((n, 3, self.size, self.size), memory_format=self.memory_format)
                step = -(-n // self.threads)
                shares = [range(at, min(first + n, at + step)) for at in range(first, first + n, step)]
                done = [row for part in pool.map(self._fill, shares, [out] * len(shares), [first] * len(shares)) for row in part]
                good = [k for k, _, error in done if error is None]
                if len(good) < n:  # bad images (skipped or about to raise) leave holes: close them
                    out = out[good]
                yield [identity for _, identity, error in done if error is None], out, [e for _, _, e in done if e is not None], []
        finally:
            pool.shutdown(wait=True)


def collate_work(items) -> Work:
    good = [(identity, x) for identity, x, err in items if x is not None]
    images = torch.stack([x for _, x in good]) if good else torch.empty(0)
    return [identity for identity, _ in good], images, [err for _, _, err in items if err is not None], []


@dataclass(frozen=True)
class VideoChunk:
    sample_id: str
    path: Path
    fps: float
    frames: list[tuple[str, float]]  # (identity, time in seconds), in time order


class VideoChunks(Dataset):
    """One chunk of a video's missing frames per item, decoded in one pass: a ready :data:`Work` batch."""

    def __init__(self, chunks: list[VideoChunk], prep: Preprocessing) -> None:
        self.chunks = chunks
        self.transform = ClipTransform(prep)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> Work:
        chunk = self.chunks[i]
        try:
            frames, notes = read_frames(chunk.path, [t for _, t in chunk.frames], chunk.fps, decode_size=self.transform.decode_size,
                                        decoder=self.transform.prep.video_decoder)
        except DataError as exc:
            return [], torch.empty(0), [f"sample {chunk.sample_id!r}: {exc}"], []
        return [identity for identity, _ in chunk.frames], self.transform(frames), [], notes


def as_is(item):
    return item


def extraction_workers(device: torch.device) -> int:
    """Decoding processes for extraction. On a CPU with few cores the CNN's threads already hold every
    core, and a worker process only preempts them; every core decoding between CNN batches
    (:class:`ThreadedBatches`) serves them better (``benchmarks/extract_speed.py`` measures extraction
    against the CNN alone). GPUs and big CPUs get workers."""
    cores = os.cpu_count() or 1
    if device.type == "cpu" and cores <= 4:
        return 0
    return default_workers() if device.type == "cpu" else min(8, max(1, cores - 1))


def _one_intra_op_thread() -> None:
    """For a decoding thread: its tensor ops run single-threaded. Otherwise each resize or normalize
    starts an OpenMP team of its own, oversubscribing the cores the CNN's team already holds. A thread
    that already ran tensor ops (the CNN's) keeps its own count, but the call also sets torch's default
    for threads that start later: :func:`extract_features` puts that back when it is done."""
    torch.set_num_threads(1)


def rebatch(batches: Iterable[Work], size: int) -> Iterator[Work]:
    """Full batches of ``size`` rows from smaller ones (video chunks: a few frames of one video each),
    so the CNN always sees large batches and a compiled one a single shape. Errors and notes pass
    through at once; at most one batch of rows is held back."""
    identities: list[str] = []
    parts: list[torch.Tensor] = []
    held = 0
    try:
        for ids, images, errors, notes in batches:
            if errors or notes:
                yield [], torch.empty(0), errors, notes
            if ids:
                identities.extend(ids)
                parts.append(images)
                held += len(ids)
            while held >= size:
                rows = torch.cat(parts) if len(parts) > 1 else parts[0]
                yield identities[:size], rows[:size], [], []
                identities, parts, held = identities[size:], ([rows[size:]] if held > size else []), held - size
        if held:
            yield identities, torch.cat(parts), [], []
    finally:
        close = getattr(batches, "close", None)
        if close is not None:  # a generator source (decoding threads): stop it now, not when collected
            close()


def chained(loaders: list) -> Iterator[Work]:
    for loader in loaders:
        yield from loader  # closing this generator closes the loader's iterator too


def prefetch(iterable: Iterable, depth: int = 2) -> Iterator:
    """Yield from ``iterable`` while a background thread produces the next items (decoding releases
    the GIL, so it overlaps the CNN without a second process)."""
    queue: Queue = Queue(maxsize=depth)
    done = object()
    stop = threading.Event()  # set when the consumer leaves early (an error, a break)

    def produce() -> None:
        _one_intra_op_thread()
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
