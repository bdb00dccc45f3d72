"""Training samples served from the feature cache: ``(T, F)`` vectors instead of ``(T, 3, S, S)`` pixels."""

from __future__ import annotations

import torch

from seqvision.data.dataset import SequenceDataset
from seqvision.data.samples import Sample
from seqvision.errors import DataError
from seqvision.features.cache import FeatureStore, video_frame_identity


class CachedFeatureDataset(SequenceDataset):
    """Same samples, sampling, targets and bad-image policy as :class:`SequenceDataset`; rows come from
    ``store`` (image identities are resolved once, so an epoch only reads memory-mapped rows). Video
    frames are found by the video file's identity and the frame's time (see ``extract_features``)."""

    def __init__(self, samples: list[Sample], store: FeatureStore, **kwargs) -> None:
        super().__init__(samples, transform=None, **kwargs)  # type: ignore[arg-type]
        self.store = store
        self._locations = [store.locate([f.path for f in s.frames]) for s in samples]  # per sample, per frame
        self._video_ids: dict[int, str] = {}  # sample index -> the video file's identity

    def load_clip(self, index: int, clip: list[int], item: dict) -> tuple[torch.Tensor | None, list[int]]:
        sample = self.samples[index]
        found, kept = [], []
        for k, i in enumerate(clip):
            location = self._locations[index][i]
            if location is None:  # a bad image skipped at extraction, or a file changed since
                self.bad_frame(item, f"sample {sample.id!r}: image {sample.frames[i].path}: not in the feature cache (unreadable, or changed since extraction)")
                if item["error"]:
                    return None, []
                continue
            found.append(location)
            kept.append(k)
        if not found:
            return None, []
        features = self.store.read(found)  # (T, F)
        if features is None:
            item["error"] = f"sample {sample.id!r}: the feature cache was damaged while training; run again to recompute it"
        return features, kept

    def _video_clips(self, index: int, item: dict) -> tuple[list[torch.Tensor], list[int]]:
        """The sampled frames' cached rows, one ``(T_c, F)`` tensor per clip (the same draws as live)."""
        sample = self.samples[index]
        video = sample.video
        try:
            info = self.video_info(index)
            file_id = self._video_ids.get(index) or self.store.identity(video.path, video=True)
            self._video_ids[index] = file_id
        except (DataError, OSError) as exc:
            self.bad_frame(item, f"sample {sample.id!r}: {exc}")
            return [], []
        clips = self.clips(index, info.num_frames, source_fps=info.fps)
        wanted = [i for clip in clips for i in clip]
        locations = [self.store.index.get(video_frame_identity(file_id, info.frame_time(i))) for i in wanted]
        if None in locations:
            time_s = info.frame_time(wanted[locations.index(None)])
            self.bad_frame(item, f"sample {sample.id!r}: video {video.path}: the frame at {time_s:.3f} s is not in the "
                                 "feature cache (the video changed since extraction, or other sampling settings)")
            return [], []
        features = self.store.read(locations)  # (sum T_c, F)
        if features is None:
            item["error"] = f"sample {sample.id!r}: the feature cache was damaged while training; run again to recompute it"
            return [], []
        return list(features.split([len(c) for c in clips])), wanted
