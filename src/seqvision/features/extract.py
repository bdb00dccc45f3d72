"""Batched feature extraction: every image of a dataset through the frozen CNN once, streamed to the cache.

Large batches across samples through the fast path of :mod:`seqvision.features.encode`, decoding in
parallel (threads between CNN batches on small CPUs, DataLoader workers elsewhere), and features
written to disk in shards as they come (bounded memory for any dataset size).

Image files are cached whole. Videos are cached frame by frame: every frame that the sampling policies
can pick (all frames for random draws, exactly the clip's frames for deterministic ones), each under the
video file's identity and the frame's time, decoded in time order in chunks of one batch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from seqvision.data.discovery import discover
from seqvision.data.images import load_image
from seqvision.data.samples import Sample
from seqvision.data.sampling import SamplingPolicy
from seqvision.data.transforms import (
    ClipTransform,
    Preprocessing,
    resolve_preprocessing,
)
from seqvision.data.video import probe_video, read_frames
from seqvision.errors import BadFileError, DataError
from seqvision.features.cache import (
    SHARD_ROWS,
    CacheKey,
    FeatureStore,
    default_cache_root,
    video_frame_identity,
)
from seqvision.features.encode import encode_batch, prepare_encoder
from seqvision.models.backbones import ImageEncoder, build_backbone
from seqvision.runtime import (
    default_device,
    default_workers,
    inference_dtype,
    tune_allocator,
)

log = logging.getLogger("seqvision")


# What both loaders yield: (identities of the rows, (n, 3, S, S) images, errors, notes)
Work = tuple[list[str], torch.Tensor, list[str], list[str]]


class _ImageFiles(Dataset):
    """One preprocessed image per item: ``(3, S, S)`` float, or the error that names the file."""

    def __init__(self, todo: dict[Path, str], owners: dict[Path, str], prep: Preprocessing) -> None:
        self.paths = list(todo)
        self.identities = todo  # path -> the identity its row is committed under
        self.owners = owners  # path -> a sample that uses it, for error messages
        self.transform = ClipTransform(prep)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor | None, str | None]:
        path = self.paths[i]
        try:
            return self.identities[path], self.transform([load_image(path)])[0], None
        except BadFileError as exc:
            return self.identities[path], None, f"sample {self.owners[path]!r}: image {path}: {exc.reason}"


class _ThreadedBatches:
    """Image batches decoded and preprocessed by a few threads *between* CNN batches (small CPUs).

    Each thread takes its share of the batch, image by image (one image at a time stays in the CPU's
    cache, which a stacked batch transform does not), and writes the rows straight into a channels_last
    batch, the CNN's layout. The resize and normalize of the threads run in parallel (they release the
    GIL); libjpeg decodes one image at a time, under the warnings lock of :mod:`seqvision.data.images`. See
    :func:`extraction_workers` for why small CPUs decode in-process. The rows equal
    :class:`_ImageFiles`' (the same per-image transform).
    """

    def __init__(self, todo: dict[Path, str], owners: dict[Path, str], prep: Preprocessing, batch_size: int, threads: int) -> None:
        self.files = _ImageFiles(todo, owners, prep)
        self.size = prep.image_size
        self.batch_size = batch_size
        self.threads = max(1, threads)

    def _fill(self, indices: range, out: torch.Tensor, first: int) -> list[tuple[int, str, str | None]]:
        done = []
        for i in indices:
            identity, image, error = self.files[i]
            if image is not None:
                out[i - first].copy_(image)
            done.append((i - first, identity, error))
        return done

    def __iter__(self) -> Iterator[Work]:
        from concurrent.futures import ThreadPoolExecutor

        # the pool lives as long as the iteration: a consumer that stops early (an error) closes it
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="seqvision-decode", initializer=_one_intra_op_thread)
        try:
            for first in range(0, len(self.files), self.batch_size):
                n = min(self.batch_size, len(self.files) - first)
                out = torch.empty((n, 3, self.size, self.size), memory_format=torch.channels_last)
                step = -(-n // self.threads)
                shares = [range(at, min(first + n, at + step)) for at in range(first, first + n, step)]
                done = [row for part in pool.map(self._fill, shares, [out] * len(shares), [first] * len(shares)) for row in part]
                good = [k for k, _, error in done if error is None]
                if len(good) < n:  # bad images (skipped or about to raise) leave holes: close them
                    out = out[good]
                yield [identity for _, identity, error in done if error is None], out, [e for _, _, e in done if e is not None], []
        finally:
            pool.shutdown(wait=True)


def _collate(items) -> Work:
    good = [(identity, x) for identity, x, err in items if x is not None]
    images = torch.stack([x for _, x in good]) if good else torch.empty(0)
    return [identity for identity, _ in good], images, [err for _, _, err in items if err is not None], []


@dataclass(frozen=True)
class _VideoChunk:
    sample_id: str
    path: Path
    fps: float
    frames: list[tuple[str, float]]  # (identity, time in seconds), in time order


class _VideoChunks(Dataset):
    """One chunk of a video's missing frames per item, decoded in one pass: a ready :data:`Work` batch."""

    def __init__(self, chunks: list[_VideoChunk], prep: Preprocessing) -> None:
        self.chunks = chunks
        self.transform = ClipTransform(prep)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> Work:
        chunk = self.chunks[i]
        try:
            frames, notes = read_frames(chunk.path, [t for _, t in chunk.frames], chunk.fps)
        except DataError as exc:
            return [], torch.empty(0), [f"sample {chunk.sample_id!r}: {exc}"], []
        return [identity for identity, _ in chunk.frames], self.transform(frames), [], notes


def _as_is(item):
    return item


def _video_plan(
    samples: list[Sample], store: FeatureStore, policies: list[tuple[SamplingPolicy, bool]], batch_size: int,
    stats: "ExtractStats", on_bad_image: str,
) -> list[_VideoChunk]:
    """The video frames the cache lacks, in chunks of at most ``batch_size`` frames of one video."""
    chunks: list[_VideoChunk] = []
    planned: set[str] = set()
    for sample in samples:
        video = sample.video
        if video is None:
            continue
        try:
            info = probe_video(video.path, video.start, video.end)
            file_id = store.identity(video.path, video=True)
        except (DataError, OSError) as exc:
            message = f"sample {sample.id!r}: {exc}"
            if on_bad_image != "skip":
                raise DataError(f"{message}. Fix or remove the file, or pass --on-bad-image skip") from None
            stats.skipped.append(message)
            continue
        wanted = sorted({i for policy, train in policies for i in policy.candidates(info.num_frames, train=train, source_fps=info.fps)})
        todo = []
        for i in wanted:
            time_s = info.frame_time(i)
            identity = video_frame_identity(file_id, time_s)
            if identity in store.index:
                stats.cached += 1
            elif identity not in planned:  # clips of one video may overlap
                planned.add(identity)
                todo.append((identity, time_s))
        for at in range(0, len(todo), batch_size):
            chunks.append(_VideoChunk(sample.id, video.path, info.fps, todo[at : at + batch_size]))
    return chunks


def extraction_workers(device: torch.device) -> int:
    """Decoding processes for extraction. On a CPU with few cores the CNN's threads already hold every
    core, and a worker process only preempts them; every core decoding between CNN batches
    (:class:`_ThreadedBatches`) serves them better (``benchmarks/extract_speed.py`` measures extraction
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


def _rebatch(batches: Iterable[Work], size: int) -> Iterator[Work]:
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


def _chained(loaders: list) -> Iterator[Work]:
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


@dataclass
class ExtractStats:
    images: int = 0  # computed in this call
    cached: int = 0  # already in the cache
    by_peers: int = 0  # computed meanwhile by the other processes of a distributed launch
    seconds: float = 0.0
    dtype: str = "float32"  # compute precision used
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. a truncated video whose last frame is repeated
    first_batch_images: int = 0  # the first batch carries the start-up (loader, compilation)...
    first_batch_seconds: float = 0.0  # ...so the steady state is measured without it

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_images_per_second(self) -> float:
        """Images/s after the first batch: the throughput a long job sees, without start-up costs."""
        rest = self.seconds - self.first_batch_seconds
        if self.images <= self.first_batch_images or rest <= 0:  # one batch: no steady state to measure
            return self.images_per_second
        return (self.images - self.first_batch_images) / rest


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
    sampling: list[tuple[SamplingPolicy, bool]] | None = None,
    launch: tuple[int, int] | None = None,
    stall_timeout: float = 600.0,
) -> ExtractStats:
    """Compute and cache the features of every image of ``samples`` that the cache lacks.

    ``sampling``: the ``(policy, train)`` pairs that will read the cache; for videos they decide which
    frames are cached (default: every frame). Image files are always cached whole.
    Already-cached images are not decoded again; a killed run loses at most the uncommitted shard.

    In a distributed launch (``(rank, world size)`` from ``launch``, else from :func:`launch_rank`: the
    processes of this node), the processes share the work instead of each computing everything: each
    computes every ``world``-th sample's images, marks its share done in the cache folder, waits for the
    others' marks, then computes whatever is still missing (normally nothing). A peer that shows no
    progress (no batch, no mark) for ``stall_timeout`` seconds is not waited for: its rest is computed
    here. Every process returns with the whole cache.
    """
    rank, world = launch if launch is not None else launch_rank()
    options = dict(batch_size=batch_size, num_workers=num_workers, device=device, precision=precision, compile=compile,
                   on_bad_image=on_bad_image, sampling=sampling)
    if world <= 1:
        return _extract(samples, encoder, prep, store, progress=progress, **options)
    token = _launch_token(world)
    _remove_stale_marks(store.dir)
    mark = store.dir / f".{token}-{rank}"
    mark.with_suffix(".working").touch()
    computed = 0
    try:
        own = _extract(samples[rank::world], encoder, prep, store, progress=progress and rank == 0,
                       heartbeat=mark.with_suffix(".working"), **options)
        computed = own.images
    finally:  # also on an error (a bad image): the others then stop waiting and meet it themselves
        mark.with_suffix(".done").write_text(str(computed))  # the peers report how many rows came from here
    peers = _wait_for_peers(store.dir, token, world, stall_timeout, rank)
    store.refresh()
    rest = _extract(samples, encoder, prep, store, progress=progress and rank == 0, **options)
    timed = own if own.first_batch_images else rest
    return ExtractStats(
        images=own.images + rest.images, cached=max(0, rest.cached - own.images - peers), by_peers=peers,
        seconds=own.seconds + rest.seconds, dtype=own.dtype,
        skipped=list(dict.fromkeys(own.skipped + rest.skipped)), notes=list(dict.fromkeys(own.notes + rest.notes)),
        first_batch_images=timed.first_batch_images, first_batch_seconds=timed.first_batch_seconds,
    )


def launch_rank() -> tuple[int, int]:
    """``(local rank, local world size)`` of a torchrun-style launch (``LOCAL_RANK`` and
    ``LOCAL_WORLD_SIZE`` set, as torchrun does), else ``(0, 1)``.

    Per node, because the default cache folder is each node's own: on several nodes each node fills
    its cache once. Lightning's own launcher sets ``LOCAL_RANK`` but not ``LOCAL_WORLD_SIZE`` in the
    processes it starts, after the first one has filled the cache alone: they find every row cached."""
    try:
        return int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    except (KeyError, ValueError):
        return 0, 1


def _launch_token(world: int) -> str:
    """The same in every process of one launch on one node, and different in the next launch: the
    processes torchrun starts share its agent as their parent process, and each launch has a new agent."""
    parts = [os.environ.get(k, "") for k in ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "MASTER_ADDR", "MASTER_PORT")]
    return "rank-" + hashlib.sha256("|".join([*parts, str(os.getppid()), str(world)]).encode()).hexdigest()[:16]


def _remove_stale_marks(folder: Path, max_age: float = 86400.0) -> None:
    for mark in [*folder.glob(".rank-*.done"), *folder.glob(".rank-*.working")]:
        try:
            if time.time() - mark.stat().st_mtime > max_age:
                mark.unlink()
        except OSError:
            pass  # another process removed it first


def _wait_for_peers(folder: Path, token: str, world: int, stall_timeout: float, rank: int, poll: float = 0.5) -> int:
    """Until every process's ``.done`` mark exists. Progress restarts the clock: a new mark, a committed
    shard, or a peer's ``.working`` mark touched (after every batch it computes). Returns the number of
    rows the other processes say they computed."""

    def progress() -> tuple:
        done = sum((folder / f".{token}-{r}.done").exists() for r in range(world))
        beats = []
        for r in range(world):
            try:
                beats.append((folder / f".{token}-{r}.working").stat().st_mtime_ns)
            except OSError:
                beats.append(0)
        return done, len(list(folder.glob("shard-*.json"))), tuple(beats)

    seen, since = progress(), time.monotonic()
    while seen[0] < world:
        time.sleep(poll)
        now = progress()
        if now != seen:
            seen, since = now, time.monotonic()
        elif time.monotonic() - since > stall_timeout:
            log.warning(
                "feature cache: %d of %d processes have not finished their share and show no progress for %.0f s; "
                "computing the rest in this process", world - seen[0], world, stall_timeout,
            )
            break
    total = 0
    for r in range(world):
        try:
            total += int((folder / f".{token}-{r}.done").read_text()) if r != rank else 0
        except (OSError, ValueError):
            pass  # a peer that never finished
    return total


def _plan(
    samples: list[Sample], store: FeatureStore, sampling: list[tuple[SamplingPolicy, bool]] | None, batch_size: int, on_bad_image: str,
) -> tuple[dict[Path, str], dict[Path, str], list, ExtractStats]:
    """What the cache lacks: each image file's owning sample, the missing files (path -> identity), the
    video chunks to compute, and stats with ``cached`` counted."""
    owners: dict[Path, str] = {}
    for s in samples:
        for f in s.frames:
            owners.setdefault(f.path, s.id)
    missing = store.missing(owners)  # path -> identity
    stats = ExtractStats(cached=len(owners) - len(missing))
    chunks = _video_plan(samples, store, sampling or [(SamplingPolicy(), False)], batch_size, stats, on_bad_image)
    return owners, missing, chunks, stats


def _extract(
    samples: list[Sample],
    encoder: ImageEncoder,
    prep: Preprocessing,
    store: FeatureStore,
    *,
    batch_size: int,
    num_workers: int | None,
    device: str | torch.device | None,
    precision: str,
    compile: bool,
    on_bad_image: str,
    progress: bool,
    sampling: list[tuple[SamplingPolicy, bool]] | None,
    heartbeat: Path | None = None,
) -> ExtractStats:
    """:func:`extract_features` in one process; ``heartbeat`` is touched after every batch."""
    tune_allocator()
    device = torch.device(device) if device else default_device()
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # pinned-memory threads and new tensors go to this GPU, not GPU 0
    owners, missing, chunks, stats = _plan(samples, store, sampling, batch_size, on_bad_image)
    dtype = inference_dtype(device, precision)
    stats.dtype = str(dtype).removeprefix("torch.")
    total = len(missing) + sum(len(c.frames) for c in chunks)
    if not total:
        return stats
    net = prepare_encoder(encoder, device, dtype=dtype, compile=compile)
    threads = torch.get_num_threads()  # decoding threads lower torch's default: restored at the end
    workers = extraction_workers(device) if num_workers is None else num_workers
    common = dict(num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=False)
    loaders: list = []
    threaded = workers == 0 and device.type == "cpu"  # decode between CNN batches, on every core
    if missing and threaded:
        loaders.append(_ThreadedBatches(missing, owners, prep, batch_size, threads))
    elif missing:
        loaders.append(DataLoader(_ImageFiles(missing, owners, prep), batch_size=batch_size, collate_fn=_collate, **common))
    if chunks:  # each item is one chunk of one video; _rebatch packs them into full batches
        loaders.append(DataLoader(_VideoChunks(chunks, prep), batch_size=None, collate_fn=_as_is, **common))
    work = _chained(loaders)
    batches = _rebatch(work if workers > 0 or threaded else prefetch(work), batch_size)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="img", desc="extract", dynamic_ncols=True)
    start = time.perf_counter()
    try:
        for identities, images, errors, notes in batches:
            for message in errors:
                if on_bad_image != "skip":
                    raise DataError(f"{message}. Fix or remove the file, or pass --on-bad-image skip")
                stats.skipped.append(message)
            stats.notes.extend(n for n in notes if n not in stats.notes)
            if identities:
                features = encode_batch(net, images, dtype, pad_to=batch_size if compile else None)  # (n, F)
                store.add(identities, features)
                stats.images += len(identities)
                if not stats.first_batch_images:
                    stats.first_batch_images, stats.first_batch_seconds = len(identities), time.perf_counter() - start
            if heartbeat is not None:
                heartbeat.touch()
            if bar is not None:
                bar.update(len(identities) + len(errors))
    finally:
        batches.close()  # stops the decoding threads and workers at once when a batch failed
        torch.set_num_threads(threads)
        store.flush()  # whatever was computed is committed, even when a later batch fails
        if bar is not None:
            bar.close()
    stats.seconds = time.perf_counter() - start
    return stats


def extract(
    data: str | Path,
    *,
    out: str | Path | None = None,
    backbone: str = "resnet18",
    weights: str = "imagenet",
    pool: str = "avg",
    image_size: int | None = None,
    resize_size: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    cache_dtype: str = "float32",
    compile: bool = False,
    content_hash: bool = False,
    shard_rows: int = SHARD_ROWS,
    sampling: SamplingPolicy | None = None,
    on_bad_image: str = "error",
    progress: bool = True,
) -> tuple[ExtractStats, FeatureStore]:
    """``seqvision extract`` from Python: fill the feature cache in ``out`` (default: ``$SEQVISION_CACHE``
    or ``~/.cache/seqvision/features``) for every image of a data root or manifest.

    The key is the backbone, its weights, the preprocessing (the weights' own, with the overrides given),
    the pooling and the precisions, so ``train --freeze`` with the same settings finds these rows.
    ``sampling``: for videos, the policy whose training and evaluation frames to cache (default: all).
    Returns the statistics and the store (``store.dir`` is the key's folder).
    """
    encoder = build_backbone(backbone, weights=weights, pool=pool)
    prep = resolve_preprocessing(encoder.preprocessing, image_size=image_size, resize_size=resize_size, mean=mean, std=std)
    encoder.preprocessing = prep  # one resolved preprocessing: the oneDNN probe runs at the size extracted
    device = torch.device(device) if device else default_device()
    compute = inference_dtype(device, precision)
    key = CacheKey.for_encoder(encoder, prep, dtype=cache_dtype, compute=compute)
    store = FeatureStore(Path(out) if out else default_cache_root(), key, content_hash=content_hash, shard_rows=shard_rows)
    policy = sampling or SamplingPolicy()
    stats = extract_features(
        discover(data, require_labels=False), encoder, prep, store, batch_size=batch_size, num_workers=num_workers,
        device=device, precision=str(compute).removeprefix("torch."), compile=compile, on_bad_image=on_bad_image,
        progress=progress, sampling=[(policy, True), (policy, False)],
    )
    return stats, store
