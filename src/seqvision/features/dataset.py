"""The feature cache as a source of samples: ``(T, F)`` rows of a frozen CNN instead of ``(T, 3, S, S)`` pixels."""

from __future__ import annotations

import torch

from seqvision.data.dataset import FrameSource, SequenceDataset
from seqvision.data.remote import shown
from seqvision.data.samples import Sample
from seqvision.data.video import VideoInfo
from seqvision.errors import DataError
from seqvision.features.cache import FeatureStore, video_frame_identity
from seqvision.models.stage_maps import MAPS_PREFIX

DAMAGED = "the feature cache was damaged while training; run again to recompute it"


class FeatureSource(FrameSource):
    """Rows of ``store`` for ``samples`` (the dataset's own list): image identities are resolved once, so
    an epoch only reads memory-mapped rows. Video frames are found by the video file's identity and the
    frame's time (see ``extract_features``). Same sampling, targets and bad-image policy as pixels."""

    carries = "features"

    def __init__(self, store: FeatureStore, samples: list[Sample]) -> None:
        self.store = store
        if store.key.pool.startswith(MAPS_PREFIX):  # the frozen stages' maps: the last stages still run
            self.carries = "maps"
        self._locations = [store.locate([f.path for f in s.frames]) for s in samples]  # per sample, per frame
        self._video_ids: dict[int, str] = {}  # sample index -> the video file's identity

    def image_clip(self, dataset: SequenceDataset, index: int, clip: list[int], item: dict) -> tuple[torch.Tensor | None, list[int]]:
        sample = dataset.samples[index]
        found, kept = [], []
        for k, i in enumerate(clip):
            location = self._locations[index][i]
            if location is None:  # a bad image skipped at extraction, or a file changed since
                dataset.bad_frame(item, f"sample {sample.id!r}: image {shown(sample.frames[i].path)}: not in the feature cache (unreadable, or changed since extraction)")
                if item["error"]:
                    return None, []
                continue
            found.append(location)
            kept.append(k)
        if not found:
            return None, []
        features = self.store.read(found)  # (T, F)
        if features is None:
            item["error"] = f"sample {sample.id!r}: {DAMAGED}"
        return features, kept

    def video_clips(self, dataset: SequenceDataset, index: int, clips: list[list[int]], info: VideoInfo, item: dict) -> list[torch.Tensor] | None:
        """The sampled frames' cached rows, one ``(T_c, F)`` tensor per clip (the same draws as live)."""
        sample = dataset.samples[index]
        video = sample.video
        try:
            file_id = self._video_ids.get(index) or self.store.identity(video.path, video=True)
            self._video_ids[index] = file_id
        except (DataError, OSError) as exc:
            dataset.bad_frame(item, f"sample {sample.id!r}: {exc}")
            return None
        wanted = [i for clip in clips for i in clip]
        locations = [self.store.index.get(video_frame_identity(file_id, info.frame_time(i))) for i in wanted]
        if None in locations:
            time_s = info.frame_time(wanted[locations.index(None)])
            dataset.bad_frame(item, f"sample {sample.id!r}: video {video.path}: the frame at {time_s:.3f} s is not in the "
                                    "feature cache (the video changed since extraction, or other sampling settings)")
            return None
        features = self.store.read(locations)  # (sum T_c, F)
        if features is None:
            item["error"] = f"sample {sample.id!r}: {DAMAGED}"
            return None
        return list(features.split([len(c) for c in clips]))


def cached_dataset(samples: list[Sample], store: FeatureStore, **options) -> SequenceDataset:
    """A :class:`SequenceDataset` of ``samples`` whose rows come from ``store`` (``options`` as for it)."""
    return SequenceDataset(samples, FeatureSource(store, samples), **options)

