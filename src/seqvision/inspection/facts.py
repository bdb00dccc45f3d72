"""What a data set holds, read from its index: samples per label and split, groups, lengths, image headers,
video metadata and a few thumbnails. Pixels are decoded only for the thumbnails and with ``check_images``.

The split is the one ``train`` would use: the data's own (a split column or folders) where it gives one,
else :func:`~seqvision.data.splits.planned_splits` with the same options and seed, on the samples
``train`` would keep (those with at least ``min_images`` frames).
"""

from __future__ import annotations

import functools
import os
import statistics
import time
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from seqvision.config import DataConfig, TrainConfig
from seqvision.data.discovery import discover
from seqvision.data.manifest import gc_paused
from seqvision.data.packs import is_pack, member_of
from seqvision.data.images import load_image, read_header
from seqvision.data.samples import SPLITS, Sample, VideoClip
from seqvision.data.sampling import uniform_indices
from seqvision.data.splits import planned_splits
from seqvision.data.video import probe_video, read_frames
from seqvision.errors import BadFileError, ConfigError, DataError
from seqvision.evaluation.html_report import MAX_THUMBS as THUMB_IMAGES  # the report's strips: the same count note
from seqvision.features.cache import file_identity
from seqvision.tasks import TargetSpec

HASH_CHOICES = ("auto", "on", "off")
AUTO_HASH_FILES = 10_000  # --hash auto hashes up to this many files ...
AUTO_HASH_BYTES = 1 << 30  # ... holding up to 1 GiB: a few seconds of reading, not a surprise of minutes
THUMB_LABELS = 50  # labels that get strips: 1,000 classes would otherwise decode up to 1,000 x 3 x 16 images
CHECK_CHUNK = 64  # video frames decoded per read when checking a whole video (bounds memory)
UNASSIGNED = "none"  # the split of a sample train would not keep (too short, unreadable video)


@dataclass
class ThumbStrip:
    """A few images of one sample, in order: paths of image files or decoded ``(H, W, 3)`` video frames."""

    label: str
    sample_id: str
    split: str
    images: list[Any]  # str | Path | np.ndarray each, as the HTML report's thumbnails take them
    indices: list[int]  # which frames of the sample they are
    total: int  # frames in the sample
    error: str | None = None  # why there is no image (a video that cannot be decoded)


@dataclass
class Inspection:
    """Everything ``seqvision inspect`` found; :mod:`seqvision.inspection.checks` adds the findings."""

    source: str
    layout: str  # folder | manifest | pack
    samples: list[Sample]
    split_of: dict[str, str]  # sample id -> train | val | test | none (left out, as train would)
    split_origin: str  # how the split was made, in words
    task: str | None
    frames_of: dict[str, int]  # sample id -> frames (images, or a video clip's frames from its headers)
    files: list[Path]  # distinct image files, in first-seen order
    headers: dict[Path, tuple[str, int, int] | None] = field(default_factory=dict)  # (format, w, h); None: unreadable
    unreadable: dict[Path, str] = field(default_factory=dict)  # file -> reason (headers, videos, --check-images)
    truncated: dict[Path, str] = field(default_factory=dict)  # video files that stop before their headers say
    bad_clips: dict[str, str] = field(default_factory=dict)  # sample id -> why its [start, end) cannot be read
    videos: dict[Path, tuple[float, float]] = field(default_factory=dict)  # video file -> (duration s, fps)
    hashes: dict[Path, str] = field(default_factory=dict)  # file -> sha256 (when hashed)
    hash_note: str = ""
    split_error: str | None = None  # why the planned split could not be made
    thumbnails: list[ThumbStrip] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    checked: bool = False  # every file decoded (--check-images)

    @functools.cached_property
    def per_label(self) -> dict[str, dict[str, int]]:
        """``{label: {split: samples}}`` with the splits train / val / test / none that occur (asked by the
        summary, the JSON and the page: counted once, after the split is made)."""
        table: dict[str, Counter] = defaultdict(Counter)
        for s in self.samples:
            table[label_of(s)][self.split_of.get(s.id, UNASSIGNED)] += 1
        order = [*SPLITS, UNASSIGNED]
        return {label: {sp: table[label][sp] for sp in order if table[label][sp]} for label in sorted(table)}

    @functools.cached_property
    def groups_per_label(self) -> dict[str, int]:
        """Distinct sources (groups; a sample without one is its own) per label."""
        groups: dict[str, set] = defaultdict(set)
        for s in self.samples:
            groups[label_of(s)].add(("g", s.group) if s.group is not None else ("s", s.id))
        return {label: len(g) for label, g in sorted(groups.items())}


def label_of(sample: Sample) -> str:
    """The label a sample is counted under: its class, its classes joined (multi-label), else "(none)"."""
    if sample.label is not None:
        return sample.label
    if sample.labels:
        return "+".join(sample.labels)
    return "(none)"


def inspect_data(
    source: str | Path, *, group_by: str | None = None, targets: list[str] | None = None, task: str = DataConfig.task,
    val_fraction: float = DataConfig.val_fraction, test_fraction: float = DataConfig.test_fraction,
    seed: int = TrainConfig.seed, min_images: int = DataConfig.min_images, check_images: bool = False, hash_files: str = "auto", max_headers: int = 2000, thumbnails: int = 3,
    workers: int | None = None,
) -> Inspection:
    """Index ``source`` (a folder or a manifest) as ``train`` would and gather its facts.

    Args:
        group_by, targets, task, val_fraction, test_fraction, seed, min_images: as for ``train`` (and
            train's defaults); they decide the split shown (when the data gives none) and which samples
            are too short.
        check_images: decode every image and every frame of every video (unreadable or truncated files).
        hash_files: ``on``: the sha256 of every file (finds the same content under two names); ``auto``:
            only when the data is small (:data:`AUTO_HASH_FILES` files, :data:`AUTO_HASH_BYTES`); ``off``.
        max_headers: image headers read for sizes and formats, spread evenly over the files (0: all);
            with ``check_images`` every file is read anyway.
        thumbnails: samples per label shown as strips of images.
        workers: threads that read files (hashes, headers, decoding); None: one per core.
    """
    if hash_files not in HASH_CHOICES:
        raise ConfigError(f"--hash {hash_files!r} is not one of {', '.join(HASH_CHOICES)}")
    if max_headers < 0 or thumbnails < 0:
        raise ConfigError("--max-headers and --thumbnails must be 0 or more")
    with gc_paused():  # a big index is millions of objects: collecting would rescan them at every pass
        return _inspect(source, group_by=group_by, targets=targets, task=task, val_fraction=val_fraction,
                        test_fraction=test_fraction, seed=seed, min_images=min_images, check_images=check_images,
                        hash_files=hash_files, max_headers=max_headers, thumbnails=thumbnails, workers=workers)


def _inspect(source: str | Path, *, group_by: str | None, targets: list[str] | None, task: str, val_fraction: float,
             test_fraction: float, seed: int, min_images: int, check_images: bool, hash_files: str, max_headers: int,
             thumbnails: int, workers: int | None) -> Inspection:
    clock = _Clock()
    samples = discover(source, targets=targets, group_by=group_by)
    clock.lap("index")
    files = list(dict.fromkeys(f.path for s in samples for f in s.frames))
    result = Inspection(
        source=str(source), layout="pack" if is_pack(source) else "folder" if Path(source).is_dir() else "manifest",
        samples=samples, split_of={},
        split_origin="", task=None, frames_of={}, files=files, checked=check_images,
        options={"group_by": group_by, "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed,
                 "min_images": min_images, "hash": hash_files, "check_images": check_images},
    )
    pool = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1)
    with pool:
        _read_videos(result, check_images)
        clock.lap("videos")
        _split(result, task=task, targets=targets, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
               min_images=min_images)
        clock.lap("split")
        _read_headers(result, pool, max_headers, check_images)
        clock.lap("check images" if check_images else "image headers")
        _hash(result, pool, hash_files)
        clock.lap("hashes")
        result.thumbnails = _thumbnails(result, thumbnails)
        clock.lap("thumbnails")
    result.seconds = clock.laps
    return result


class _Clock:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self._last = now


# ------------------------------------------------------------------------------------------ the split


def _split(result: Inspection, *, task: str, targets: list[str] | None, val_fraction: float, test_fraction: float,
           seed: int, min_images: int) -> None:
    """Each sample's split as train makes it, on the samples train keeps; the others get ``none``."""
    kept = [s for s in result.samples if result.frames_of.get(s.id, 0) >= min_images]
    result.split_of = {s.id: UNASSIGNED for s in result.samples}
    result.split_of.update({s.id: s.split for s in kept if s.split})
    if not kept:
        result.split_error = f"no sample has --min-images {min_images} frames: nothing to split"
        return
    given = sum(1 for s in kept if s.split)
    try:
        spec = TargetSpec.infer(kept, task=task, target_names=targets)
        result.task = spec.task
        # train's own function; its warnings (groups the data's split straddles, sources that look shared)
        # are findings here, reported once by the checks
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assignment = planned_splits(kept, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                                        stratify=spec.kind.stratified)
    except DataError as exc:
        result.split_error = str(exc)
        result.split_origin = "the data's own split only (the rest cannot be split: see the problems)"
        return
    result.split_of.update(assignment)
    if given == len(kept):
        result.split_origin = "the data's own split"
    else:
        planned = f"the split train makes with --seed {seed}, --val-fraction {val_fraction:g}, --test-fraction {test_fraction:g}"
        result.split_origin = planned + (f" (the data places {given} of {len(kept)} samples itself)" if given else "")


# ------------------------------------------------------------------------------------- files and videos


def _read_videos(result: Inspection, check: bool) -> None:
    """Each video file's duration and frame rate, each sample's frame count (a clip's from its headers);
    with ``check``, every frame of every video decoded (in chunks: memory stays bounded)."""
    for s in result.samples:
        if s.video is None:
            result.frames_of[s.id] = len(s.frames)
            continue
        path = s.video.path
        if path not in result.videos and path not in result.unreadable:
            try:
                info = probe_video(path)
                result.videos[path] = (info.num_frames / info.fps, info.fps)
            except BadFileError as exc:
                result.unreadable[path] = exc.reason
        if path in result.unreadable:
            result.frames_of[s.id] = 0
            continue
        try:
            result.frames_of[s.id] = probe_video(path, s.video.start, s.video.end).num_frames
        except BadFileError as exc:  # the file is fine (it probed above), the clip's times are not
            result.bad_clips[s.id] = exc.reason
            result.frames_of[s.id] = 0
    if check:
        for path in list(result.videos):
            _check_video(result, path)


def _check_video(result: Inspection, path: Path) -> None:
    info = probe_video(path)
    times = [info.frame_time(i) for i in range(info.num_frames)]
    for at in range(0, len(times), CHECK_CHUNK):
        try:
            _, notes = read_frames(path, times[at : at + CHECK_CHUNK], info.fps, decode_size=16)
        except BadFileError as exc:
            if at == 0:
                result.unreadable[path] = exc.reason
            else:  # the frames before decoded: the file stops early
                result.truncated[path] = f"nothing decodes from {info.frame_time(at):.3f} s on ({exc.reason})"
            return
        if notes:  # past the last decodable frame: the file stops before its headers say
            result.truncated[path] = notes[0].removeprefix(f"{path}: ")
            return


def _read_headers(result: Inspection, pool: ThreadPoolExecutor, limit: int, check: bool) -> None:
    """Format and size of (a spread of) the image files from their headers (:func:`read_header` decodes no
    pixels and refuses what train refuses unread, e.g. an image over the pixel limit); with ``check``,
    every file is also decoded by the library's own loader, as training would."""
    files = result.files
    if not check and limit and len(files) > limit:
        files = [files[i] for i in uniform_indices(len(files), limit)]
    for path, (header, problem) in zip(files, pool.map(lambda p: _header(p, check), files)):
        result.headers[path] = header
        if problem is not None:
            result.unreadable[path] = problem


def _header(path: Path, decode: bool) -> tuple[tuple[str, int, int] | None, str | None]:
    try:  # the loader's own header check: what train refuses unread (too large, not an image) is refused here
        header = read_header(path)
    except BadFileError as exc:
        return None, exc.reason
    if decode:
        try:
            load_image(path)
        except BadFileError as exc:
            return header, exc.reason
    return header, None


def _hash(result: Inspection, pool: ThreadPoolExecutor, mode: str) -> None:
    """The sha256 of every image and video file (the feature cache's ``--content-hash`` identity), when
    asked, or when ``auto`` finds the data small enough to read in seconds."""
    files = [*result.files, *result.videos]
    if mode == "off":
        result.hash_note = "content hashes off (--hash off): only identical paths are found"
        return
    if mode == "auto":
        if len(files) > AUTO_HASH_FILES:
            result.hash_note = (f"content hashes skipped: {len(files):,} files is more than --hash auto reads "
                                f"({AUTO_HASH_FILES:,}); pass --hash on to find copies under other names")
            return
        size = sum(_size(p) for p in files)
        if size > AUTO_HASH_BYTES:
            result.hash_note = (f"content hashes skipped: {size / 2**30:.1f} GiB is more than --hash auto reads "
                                f"({AUTO_HASH_BYTES / 2**30:.0f} GiB); pass --hash on to find copies under other names")
            return
    readable = [p for p in files if p not in result.unreadable]
    for path, digest in zip(readable, pool.map(_digest, readable)):
        if digest is not None:
            result.hashes[path] = digest
    result.hash_note = f"content hashes (sha256) of {len(result.hashes):,} files"


def _digest(path: Path) -> str | None:
    try:
        return file_identity(path, content_hash=True)
    except (OSError, BadFileError):
        return None  # gone or unreadable (a file, a pack's shard): the header check says so


def _size(path: Path) -> int:
    member = member_of(path)
    if member is not None:
        return member.size
    try:
        return path.stat().st_size
    except OSError:
        return 0


# ------------------------------------------------------------------------------------------ thumbnails


def _thumbnails(result: Inspection, per_label: int) -> list[ThumbStrip]:
    """``per_label`` samples of each label (evenly spread over its samples, sorted by id), each as a strip
    of at most :data:`THUMB_IMAGES` of its images in order; the first :data:`THUMB_LABELS` labels by name.
    Only these images are decoded."""
    by_label: dict[str, list[Sample]] = defaultdict(list)
    for s in result.samples:
        by_label[label_of(s)].append(s)
    strips = []
    for label in sorted(by_label)[:THUMB_LABELS]:
        chosen = sorted(by_label[label], key=lambda s: s.id)
        for i in uniform_indices(len(chosen), per_label) if per_label else []:
            strips.append(_strip(result, chosen[i], label))
    return strips


def _strip(result: Inspection, sample: Sample, label: str) -> ThumbStrip:
    split = result.split_of.get(sample.id, UNASSIGNED)
    if sample.video is None:
        indices = uniform_indices(len(sample.frames), THUMB_IMAGES)
        return ThumbStrip(label, sample.id, split, [sample.frames[i].path for i in indices], indices, len(sample.frames))
    total = result.frames_of.get(sample.id, 0)
    indices = uniform_indices(total, THUMB_IMAGES)
    try:
        info = probe_video(sample.video.path, sample.video.start, sample.video.end)
        frames, _ = read_frames(sample.video.path, [info.frame_time(i) for i in indices], info.fps, decode_size=64)
    except DataError as exc:
        return ThumbStrip(label, sample.id, split, [], [], total, error=str(exc))
    images = [f.permute(1, 2, 0).numpy() for f in frames]  # (3, H, W) -> (H, W, 3)
    return ThumbStrip(label, sample.id, split, images, indices, total)


# --------------------------------------------------------------------------------------- summaries


def histogram(values: Iterable[float], *, bins: int = 12) -> list[tuple[str, int]]:
    """``(range, count)`` rows: one per value when there are few distinct whole values, else ``bins``
    equal-width ranges."""
    values = list(values)
    if not values:
        return []
    distinct = sorted(set(values))
    if len(distinct) <= bins and all(float(v).is_integer() for v in distinct):
        counts = Counter(values)
        return [(f"{v:g}", counts[v]) for v in distinct]
    counts, edges = np.histogram(np.asarray(values, dtype=float), bins=bins)
    return [(f"{edges[i]:.3g}-{edges[i + 1]:.3g}", int(c)) for i, c in enumerate(counts)]


def lengths_summary(lengths: list[int]) -> str:
    """``min / median / max`` of the frames per sample, in words."""
    if not lengths:
        return "no samples"
    return f"min {min(lengths)}, median {statistics.median(lengths):g}, max {max(lengths)}"


def video_clip_key(video: VideoClip) -> tuple:
    """A video sample's identity: its file and its ``[start, end)``."""
    return (str(video.path), video.start, video.end)
