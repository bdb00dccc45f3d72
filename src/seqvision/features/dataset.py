"""Training samples served from the feature cache: ``(T, F)`` vectors instead of ``(T, 3, S, S)`` pixels."""

from __future__ import annotations

from pathlib import Path

import torch

from seqvision.data.dataset import SequenceDataset
from seqvision.data.samples import Sample
from seqvision.features.cache import FeatureStore


class CachedFeatureDataset(SequenceDataset):
    """Same samples, sampling, targets and bad-image policy as :class:`SequenceDataset`; rows come from
    ``store`` (image identities are resolved once, so an epoch only reads memory-mapped rows)."""

    def __init__(self, samples: list[Sample], store: FeatureStore, **kwargs) -> None:
        super().__init__(samples, transform=None, **kwargs)  # type: ignore[arg-type]
        self.store = store
        self._locations = [store.locate([f.path for f in s.frames]) for s in samples]
        self._row_of = [{f.path: i for i, f in enumerate(s.frames)} for s in samples]

    def load_clip(self, index: int, paths: list[Path], item: dict) -> tuple[torch.Tensor | None, list[int]]:
        sample = self.samples[index]
        found, kept = [], []
        for k, path in enumerate(paths):
            location = self._locations[index][self._row_of[index][path]]
            if location is None:  # a bad image skipped at extraction, or a file changed since
                self.bad_frame(item, f"sample {sample.id!r}: image {path}: not in the feature cache (unreadable, or changed since extraction)")
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
