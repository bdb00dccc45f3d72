"""Batched feature extraction: every image of a dataset through the frozen CNN once, streamed to the cache.

Large batches across samples through the fast path of :mod:`seqvision.features.encode`, decoding in
parallel (threads on small CPUs: between torch's CNN batches, beside another runtime's; DataLoader workers
elsewhere; :func:`overlaps`), and features
written to disk in shards as they come (bounded memory for any dataset size).

Image files are cached whole. Videos are cached frame by frame: every frame that the sampling policies
can pick (all frames for random draws, exactly the clip's frames for deterministic ones), each under the
video file's identity and the frame's time, decoded in time order in chunks of one batch.

The loading is :mod:`seqvision.features.loading`; sharing one extraction between the processes of a
launch is :mod:`seqvision.features.sharing`; this module plans what is missing and runs the loop.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from seqvision.data.samples import Sample
from seqvision.data.sampling import SamplingPolicy
from seqvision.data.transforms import Preprocessing
from seqvision.data.video import VideoInfo, probe_video
from seqvision.errors import ConfigError, DataError
from seqvision.features.cache import (
    FeatureStore,
    video_frame_identity,
)
from seqvision.features.encode import encode_batch, input_layout, prepare_encoder
from seqvision.features.engines import EngineEncoder
from seqvision.features.runtimes import Runtime, check_runtime
from seqvision.features.loading import (
    ImageFiles,
    ThreadedBatches,
    VideoChunk,
    VideoChunks,
    as_is,
    chained,
    collate_work,
    extraction_workers,
    prefetch,
    rebatch,
)
from seqvision.features.sharing import (
    launch_rank,
    launch_token,
    remove_stale_marks,
    wait_for_peers,
)
from seqvision.models.backbones import ImageEncoder
from seqvision.runtime import (
    default_device,
    inference_dtype,
    resolve_device,
    tune_allocator,
)

log = logging.getLogger("seqvision")


@dataclass
class ExtractStats:
    images: int = 0  # computed in this call
    cached: int = 0  # already in the cache
    by_peers: int = 0  # computed meanwhile by the other processes of a distributed launch
    seconds: float = 0.0
    dtype: str = "float32"  # compute precision used
    runtime: str = "torch"  # the inference runtime that ran the CNN (the store key's: see features.runtimes)
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
    The CNN runs on the inference runtime ``store``'s key names (``CacheKey.runtime``: torch unless the
    key was made for another one, see :func:`~seqvision.features.runtimes.runtime_for_cache`).

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
    token = launch_token(world)
    remove_stale_marks(store.dir)
    mark = store.dir / f".{token}-{rank}"
    mark.with_suffix(".working").touch()
    computed = 0
    try:
        own = _extract(samples[rank::world], encoder, prep, store, progress=progress and rank == 0,
                       heartbeat=mark.with_suffix(".working"), **options)
        computed = own.images
    finally:  # also on an error (a bad image): the others then stop waiting and meet it themselves
        mark.with_suffix(".done").write_text(str(computed))  # the peers report how many rows came from here
    peers = wait_for_peers(store.dir, token, world, stall_timeout, rank)
    store.refresh()
    rest = _extract(samples, encoder, prep, store, progress=progress and rank == 0, **options)
    timed = own if own.first_batch_images else rest
    return ExtractStats(
        images=own.images + rest.images, cached=max(0, rest.cached - own.images - peers), by_peers=peers,
        seconds=own.seconds + rest.seconds, dtype=own.dtype, runtime=own.runtime,
        skipped=list(dict.fromkeys(own.skipped + rest.skipped)), notes=list(dict.fromkeys(own.notes + rest.notes)),
        first_batch_images=timed.first_batch_images, first_batch_seconds=timed.first_batch_seconds,
    )


def _video_plan(
    samples: list[Sample], store: FeatureStore, policies: list[tuple[SamplingPolicy, bool]], batch_size: int,
    stats: "ExtractStats", on_bad_image: str,
) -> list[VideoChunk]:
    """The video frames the cache lacks, in chunks of at most ``batch_size`` frames of one video."""
    chunks: list[VideoChunk] = []
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
        todo = []
        for i in _wanted(info, policies):
            time_s = info.frame_time(i)
            identity = video_frame_identity(file_id, time_s)
            if identity in store.index:
                stats.cached += 1
            elif identity not in planned:  # clips of one video may overlap
                planned.add(identity)
                todo.append((identity, time_s))
        for at in range(0, len(todo), batch_size):
            chunks.append(VideoChunk(sample.id, video.path, info.fps, todo[at : at + batch_size]))
    return chunks


def _wanted(info: VideoInfo, policies: list[tuple[SamplingPolicy, bool]]) -> list[int]:
    """The frame indices of a probed video clip that the cache must hold for ``policies`` (sorted)."""
    return sorted({i for policy, train in policies for i in policy.candidates(info.num_frames, train=train, source_fps=info.fps)})


def planned_rows(samples: list[Sample], sampling: list[tuple[SamplingPolicy, bool]] | None = None) -> int:
    """How many rows the cache holds for ``samples`` once :func:`extract_features` has run with ``sampling``:
    every image file once, and for each video the frames its policies can pick (every frame for ``random``
    and ``segments`` draws, the clips' frames for deterministic ones), frames shared by clips of one video
    once. Videos are probed (headers only; remembered for the extraction); one that cannot be read counts 0."""
    policies = sampling or [(SamplingPolicy(), False)]
    files = {f.path for s in samples for f in s.frames}
    clips = sorted((s.video for s in samples if s.video is not None), key=lambda v: str(v.path))
    frames = 0
    for _path, same_file in itertools.groupby(clips, key=lambda v: str(v.path)):  # one video's times held at once
        times: set[str] = set()
        for video in same_file:
            try:
                info = probe_video(video.path, video.start, video.end)
            except (DataError, OSError):
                continue  # the extraction skips or refuses it, naming it
            times.update(f"{info.frame_time(i):.6f}" for i in _wanted(info, policies))  # as video_frame_identity
        frames += len(times)
    return len(files) + frames


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


def store_runtime(store: FeatureStore, device: torch.device, dtype: torch.dtype, *, compile: bool = False) -> Runtime:
    """The runtime ``store``'s key names (:attr:`CacheKey.runtime`), checked to run here as it did when
    the key was made: installed at the same version, on ``device`` in ``dtype``, not with ``compile``."""
    runtime = Runtime.from_label(store.key.runtime)
    if runtime.name == "torch" and dtype != torch.int8:  # torch with int8: check_runtime refuses it in one line
        return runtime
    check_runtime(runtime.name, device, dtype)
    if Runtime.of(runtime.name) != runtime:
        raise ConfigError(f"the feature cache key {store.key.digest} names {runtime.label}, but {Runtime.of(runtime.name).label} "
                          "is installed here; make the key with this version (CacheKey.for_encoder(runtime=...))")
    if compile:
        raise ConfigError(f"--compile is torch's (torch.compile): not with --runtime {runtime.name}; drop one of them")
    return runtime


def overlaps(net: torch.nn.Module, workers: int, threaded: bool) -> bool:
    """Whether the next batch is decoded while the CNN runs this one (a :func:`prefetch` thread) rather than
    between CNN batches. Workers decode beside the CNN by themselves. Decoding threads in this process
    (small CPUs, :class:`ThreadedBatches`) overlap an engine's CNN (ONNX Runtime, OpenVINO): its threads
    yield the cores when idle (no spinning: :func:`~seqvision.features.engines.ort_session`), so decoding
    fills the gaps of each op's parallel section and the CPU stays busy; torch's OpenMP team does not
    share its cores well (a descheduled thread stalls the whole team at every barrier), so torch decodes
    between batches. Without workers and threads (a GPU with ``num_workers=0``), a thread decodes ahead."""
    if workers > 0:
        return False
    return isinstance(net, EngineEncoder) if threaded else True


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
    device = resolve_device(device) if device else default_device()
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # pinned-memory threads and new tensors go to this GPU, not GPU 0
    owners, missing, chunks, stats = _plan(samples, store, sampling, batch_size, on_bad_image)
    dtype = inference_dtype(device, precision)
    stats.dtype = str(dtype).removeprefix("torch.")
    runtime = store_runtime(store, device, dtype, compile=compile)  # the runtime the key names: no other fills it
    stats.runtime = runtime.label
    total = len(missing) + sum(len(c.frames) for c in chunks)
    if not total:
        return stats
    # the ONNX files beside the cache (its root's .runtimes); decoding shares the cores with the CNN
    net = prepare_encoder(encoder, device, dtype=dtype, compile=compile, runtime=runtime, root=store.dir.parent,
                          shares_cores=device.type == "cpu")
    threads = torch.get_num_threads()  # decoding threads lower torch's default: restored at the end
    workers = extraction_workers(device) if num_workers is None else num_workers
    common = dict(num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=False)
    loaders: list = []
    threaded = workers == 0 and device.type == "cpu"  # decode on every core, in this process
    if missing and threaded:
        loaders.append(ThreadedBatches(missing, owners, prep, batch_size, threads, input_layout(net)))
    elif missing:
        loaders.append(DataLoader(ImageFiles(missing, owners, prep), batch_size=batch_size, collate_fn=collate_work, **common))
    if chunks:  # each item is one chunk of one video; rebatch packs them into full batches
        loaders.append(DataLoader(VideoChunks(chunks, prep), batch_size=None, collate_fn=as_is, **common))
    work = chained(loaders)
    batches = rebatch(prefetch(work) if overlaps(net, workers, threaded) else work, batch_size)
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
