"""Samples -> sampled, transformed clips -> a flat batch of real images plus lengths (no padded image, ever)."""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch
from torch.utils.data import Dataset

from seqvision.data.images import load_image
from seqvision.data.remote import shown
from seqvision.data.samples import Sample
from seqvision.data.sampling import SamplingPolicy, shuffled
from seqvision.data.transforms import ClipTransform
from seqvision.data.video import VideoInfo, probe_video, read_frames
from seqvision.errors import BadFileError, DataError


@dataclass
class Batch:
    """A collated batch. ``images`` holds only real images, clip after clip: ``N = lengths.sum()``.

    Usually one clip per sample. With multi-clip evaluation a sample has several clips: ``groups``
    maps each clip to its sample and :meth:`merge_clips` averages the clips' outputs per sample.
    """

    images: torch.Tensor  # (N, 3, S, S) float pixels, or (N, F) CNN features: ``carries`` says which
    lengths: torch.Tensor  # (C,) long, images per clip
    sample_ids: list[str]  # (B,)
    targets: torch.Tensor | None = None  # (B,) long class indices, or (B, K) float regression targets
    skipped: list[str] = field(default_factory=list)  # what --on-bad-image skip left out, for the summary
    errors: list[str] = field(default_factory=list)  # bad input found in a worker; raised in the main process
    # "pixels" for the CNN, "features" (the cache's, or encoded): run the heads only, or "maps": the frozen
    # stages' cached maps (N, C*h*w), which the last stages of the CNN turn into features
    carries: str = "pixels"
    groups: torch.Tensor | None = None  # (C,) sample index of each clip; None when C == B
    frames: list[str] = field(default_factory=list)  # (N,) which image each row of ``images`` is
    left_out: list[str] = field(default_factory=list)  # ids of the samples --on-bad-image skip left out whole

    def raise_errors(self) -> None:
        if self.errors:
            raise DataError(self.errors[0])

    def merge_clips(self, outputs: torch.Tensor) -> torch.Tensor:
        """``(C, K)`` per-clip outputs -> ``(B, K)`` per sample (the mean over a sample's clips)."""
        if self.groups is None:
            return outputs
        summed = torch.zeros(len(self.sample_ids), outputs.shape[-1], dtype=outputs.dtype, device=outputs.device)
        summed.index_add_(0, self.groups.to(outputs.device), outputs)
        counts = torch.bincount(self.groups, minlength=len(self.sample_ids)).clamp_min(1).to(outputs)
        return summed / counts[:, None]


class FrameSource:
    """Where a sample's images come from, injected into :class:`SequenceDataset`: pixels decoded and
    transformed (:class:`PixelSource`), or a frozen CNN's rows from the feature cache
    (:class:`seqvision.features.dataset.FeatureSource`). Both give, per clip, one row per image kept:
    ``(T, 3, S, S)`` or ``(T, F)``; bad frames are reported through the dataset's policy."""

    carries: ClassVar[str]  # "pixels" | "features" | "maps": what the rows are (Batch.carries)

    def image_clip(self, dataset: "SequenceDataset", index: int, clip: list[int], item: dict) -> tuple[torch.Tensor | None, list[int]]:
        """Sample ``index``'s images ``clip`` (frame indices) -> rows (``None`` if none is readable), and
        the positions in ``clip`` that made it (bad images may be skipped)."""
        raise NotImplementedError

    def video_clips(self, dataset: "SequenceDataset", index: int, clips: list[list[int]], info: VideoInfo, item: dict) -> list[torch.Tensor] | None:
        """Sample ``index``'s video frames of each clip -> rows per clip; ``None`` when they cannot be had
        (reported through ``dataset.bad_frame``)."""
        raise NotImplementedError


class PixelSource(FrameSource):
    """Images decoded (EXIF-rotated; videos with PyAV, seeking) and passed through ``transform``."""

    carries = "pixels"

    def __init__(self, transform: ClipTransform) -> None:
        self.transform = transform

    def image_clip(self, dataset, index, clip, item):
        sample = dataset.samples[index]
        frames, kept = [], []
        for k, i in enumerate(clip):
            path = sample.frames[i].path
            try:
                frames.append(load_image(path, decode_size=self.transform.decode_size))
                kept.append(k)
            except BadFileError as exc:
                dataset.bad_frame(item, f"sample {sample.id!r}: image {shown(path)}: {exc.reason}")
                if item["error"]:
                    return None, []
        return (self.transform(frames) if frames else None), kept

    def video_clips(self, dataset, index, clips, info, item):
        sample = dataset.samples[index]
        wanted = [i for clip in clips for i in clip]
        try:
            frames, notes = read_frames(sample.video.path, [info.frame_time(i) for i in wanted], info.fps,
                                        decode_size=self.transform.decode_size, decoder=self.transform.prep.video_decoder)
        except DataError as exc:
            dataset.bad_frame(item, f"sample {sample.id!r}: {exc}")
            return None
        item["skipped"].extend(f"sample {sample.id!r}: {n}" for n in notes)
        out, at = [], 0
        for clip in clips:
            out.append(self.transform(frames[at : at + len(clip)]))
            at += len(clip)
        return out


class SequenceDataset(Dataset):
    """Loads the sampled frames of one sample (image files or a video), in order, from one source: pixels
    through a transform (pass a :class:`ClipTransform` or a :class:`PixelSource`) or cached features.

    Errors are not raised inside the dataset: a DataLoader worker would wrap them in a traceback.
    They travel in the batch (``Batch.errors``) and :meth:`Batch.raise_errors` raises them cleanly.
    """

    def __init__(
        self,
        samples: list[Sample],
        source: FrameSource | ClipTransform,
        *,
        encode_target: Callable[[Sample, list[int]], torch.Tensor] | None = None,
        per_image: bool = False,
        sampling: SamplingPolicy | None = None,
        train: bool = False,
        on_bad_image: str = "error",
        shuffle_frames: bool = False,
        seed: int = 0,
    ) -> None:
        self.samples = samples
        self.source = source if isinstance(source, FrameSource) else PixelSource(source)
        self.encode_target = encode_target  # (sample, frame indices used) -> target tensor
        self.per_image = per_image  # targets are per image: (T,) or (T, K), concatenated like the images
        self.sampling = sampling or SamplingPolicy()
        self.train = train
        self.on_bad_image = on_bad_image
        self.shuffle_frames = shuffle_frames
        self.seed = seed
        self.notes: set[str] = set()  # per-sample facts for the summary (e.g. shorter than the clip)

    def __len__(self) -> int:
        return len(self.samples)

    def clips(self, index: int, num_frames: int, source_fps: float | None = None) -> list[list[int]]:
        """Frame indices of each clip of sample ``index`` (random draws from the seeded global RNG in
        training, so a seeded run and its resumed continuation draw alike; none in evaluation)."""
        clips = self.sampling.clips_for(num_frames, train=self.train, rng=random, source_fps=source_fps)
        wanted = self.sampling.num_frames
        if wanted and self.sampling.mode in ("random", "segments") and 0 < num_frames < wanted:
            self.notes.add(f"sample {self.samples[index].id!r}: {num_frames} frame(s), fewer than --num-frames {wanted}: all used")
        if self.shuffle_frames:
            # seeded by the sample's id, not its position: the same order in any list, shard or worker
            sample_seed = zlib.crc32(self.samples[index].id.encode())
            clips = [shuffled(c, seed=self.seed * 1_000_003 + sample_seed) for c in clips]
        return clips

    def new_item(self, index: int) -> dict:
        """The empty item of sample ``index``: what :func:`collate` reads, filled by :meth:`finish`."""
        return {
            "id": self.samples[index].id, "skipped": [], "error": None, "clip": None, "clip_lengths": None,
            "target": None, "frame_target": None, "frames": [], "carries": self.source.carries,
        }

    def __getitem__(self, index: int) -> dict:
        item = self.new_item(index)
        clips, used = self.load_clips(index, item)  # used: the frame index of every image in the clips
        item["skipped"].extend(sorted(self.notes))  # reported once: the summary de-duplicates
        self.notes.clear()
        return self.finish(index, item, clips, used)

    def finish(self, index: int, item: dict, clips: list[torch.Tensor], used: list[int]) -> dict:
        """Complete ``item`` for sample ``index`` from its loaded clips (images ``(T_c, 3, S, S)``, or
        their features ``(T_c, F)`` when assembled from pieces) and the frame index of every image kept:
        the concatenated clip, its lengths, frame names and target, or the error / skip that applies."""
        sample = self.samples[index]
        if item["error"]:
            return item
        if not clips:
            message = f"sample {sample.id!r} ({sample.source}): no readable image"
            if self.on_bad_image != "skip" or not (sample.frames or sample.video):
                item["error"] = f"{message}; every sample needs at least one image"
            else:
                item["skipped"].append(message + ", sample left out")
            return item
        item["clip"] = torch.cat(clips)  # (sum T_c, ...)
        item["clip_lengths"] = [len(c) for c in clips]
        item["frames"] = self.frame_names(index, used)
        if self.encode_target is not None:
            try:
                target = self.encode_target(sample, used)
            except DataError as exc:
                item["error"] = str(exc)
                return item
            item["frame_target" if target.dim() >= 1 and self.per_image else "target"] = target
        return item

    def bad_frame(self, item: dict, message: str) -> None:
        """Record a bad image: an error (default) or, with ``on_bad_image='skip'``, a reported skip."""
        if self.on_bad_image != "skip":
            item["error"] = f"{message}. Fix or remove the file, or pass --on-bad-image skip"
        else:
            item["skipped"].append(message)

    def load_clips(self, index: int, item: dict) -> tuple[list[torch.Tensor], list[int]]:
        """Each clip's frames decoded and transformed -> ``(T_c, 3, S, S)`` (empty clips dropped), and
        the frame index of every image kept, in order (per-image targets follow them)."""
        sample = self.samples[index]
        if sample.video is not None:
            return self._video_clips(index, item)
        out, used = [], []
        for clip in self.clips(index, len(sample.frames)):
            tensor, kept = self.load_clip(index, clip, item)
            if item["error"]:
                return [], []
            if tensor is not None:
                out.append(tensor)
                used.extend(clip[k] for k in kept)
        return out, used

    def load_clip(self, index: int, clip: list[int], item: dict) -> tuple[torch.Tensor | None, list[int]]:
        """Sample ``index``'s images ``clip`` (frame indices) from the source -> rows (``None`` if none is
        readable), and the positions in ``clip`` that made it (bad images may be skipped)."""
        return self.source.image_clip(self, index, clip, item)

    def frame_names(self, index: int, used: list[int]) -> list[str]:
        """What each used image is, for reports and per-image predictions: an image's path, or a video
        frame as ``path@T.TTTs`` (its time in the whole video, so a clip with a start shows its own frames)."""
        sample = self.samples[index]
        if sample.video is None:
            return [shown(sample.frames[i].path) for i in used]  # a URL unfolded, without credentials
        info = self.video_info(index)
        return [f"{sample.video.path}@{info.frame_time(i):.3f}s" for i in used]

    def video_info(self, index: int):
        """The headers of sample ``index``'s video (:class:`VideoInfo`; ``probe_video`` reads them once
        per file version); raises :class:`DataError` naming the file."""
        video = self.samples[index].video
        return probe_video(video.path, video.start, video.end)

    def _video_clips(self, index: int, item: dict) -> tuple[list[torch.Tensor], list[int]]:
        sample = self.samples[index]
        try:
            info = self.video_info(index)
        except DataError as exc:
            self.bad_frame(item, f"sample {sample.id!r}: {exc}")
            return [], []
        clips = self.clips(index, info.num_frames, source_fps=info.fps)
        out = self.source.video_clips(self, index, clips, info, item)
        if out is None:
            return [], []
        return out, [i for clip in clips for i in clip]


def collate(items: list[dict]) -> Batch:
    """Concatenate the clips of a batch into ``(N, 3, S, S)``; samples left out are only reported."""
    kept = [it for it in items if it["clip"] is not None]
    skipped = [msg for it in items for msg in it["skipped"]]
    errors = [it["error"] for it in items if it["error"]]
    left_out = [it["id"] for it in items if it["clip"] is None and not it["error"]]
    if not kept:
        return Batch(torch.empty(0), torch.zeros(0, dtype=torch.long), [], None, skipped, errors, left_out=left_out)
    targets = None
    if kept[0]["frame_target"] is not None:  # per-image targets: (N,) or (N, K), aligned with images
        targets = torch.cat([it["frame_target"] for it in kept])
    elif kept[0]["target"] is not None:
        targets = torch.stack([it["target"] for it in kept])
    lengths = [n for it in kept for n in it["clip_lengths"]]
    groups = None
    if len(lengths) != len(kept):
        groups = torch.tensor([b for b, it in enumerate(kept) for _ in it["clip_lengths"]], dtype=torch.long)
    return Batch(
        images=torch.cat([it["clip"] for it in kept]),
        lengths=torch.tensor(lengths, dtype=torch.long),
        sample_ids=[it["id"] for it in kept],
        targets=targets,
        skipped=skipped,
        errors=errors,
        carries=kept[0]["carries"],
        groups=groups,
        frames=[f for it in kept for f in it["frames"]],
        left_out=left_out,
    )
