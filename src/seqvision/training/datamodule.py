"""Index + sampling + loading for training: which samples go where, and the DataLoaders that feed them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
from torch.utils.data import DataLoader, WeightedRandomSampler

from seqvision.config import DataConfig
from seqvision.data.dataset import SequenceDataset, collate
from seqvision.data.discovery import discover
from seqvision.data.packs import is_pack
from seqvision.data.shard_loader import stream_loader
from seqvision.data.samples import Sample
from seqvision.data.splits import planned_splits, save_splits
from seqvision.tasks import TargetSpec
from seqvision.data.transforms import ClipTransform, Preprocessing
from seqvision.data.video import probe_video
from seqvision.errors import DataError
from seqvision.features.dataset import cached_dataset
from seqvision.runtime import default_workers

if TYPE_CHECKING:
    from seqvision.features.cache import FeatureStore


@dataclass
class PreparedData:
    """Samples per split, the task, and what was left out (reported, never silent)."""

    splits: dict[str, list[Sample]]
    spec: TargetSpec
    dropped: list[str] = field(default_factory=list)

    def save_splits(self, path: Path) -> None:
        """Write ``splits.json``: every sample's split and group."""
        samples = [s for split in self.splits.values() for s in split]
        save_splits({s.id: name for name, split in self.splits.items() for s in split}, path, samples)


def filter_short(samples: list[Sample], cfg: DataConfig) -> tuple[list[Sample], list[str]]:
    """Apply ``min_images``: an error naming the sample, or (``short_samples=drop``) a reported drop."""
    kept, dropped = [], []
    for s in samples:
        count = len(s.frames)
        if s.video is not None:  # read the headers now: a bad video is reported before training starts
            try:
                count = probe_video(s.video.path, s.video.start, s.video.end).num_frames
            except DataError as exc:
                if cfg.on_bad_image != "skip":
                    raise DataError(f"sample {s.id!r}: {exc}; fix or remove it, or pass --on-bad-image skip") from None
                dropped.append(f"sample {s.id!r}: {exc}, dropped")
                continue
        if count >= cfg.min_images:
            kept.append(s)
            continue
        what = "no images" if not count else f"{count} frame(s), fewer than --min-images {cfg.min_images}"
        if cfg.short_samples != "drop":
            raise DataError(f"sample {s.id!r} ({s.source}) has {what}; add images, or pass --short-samples drop")
        dropped.append(f"sample {s.id!r} ({s.source}): {what}, dropped")
    return kept, dropped


def prepare_data(cfg: DataConfig, *, seed: int, splits_file: Path | None = None) -> PreparedData:
    """Discover, filter, infer the task and split. A saved ``splits_file`` is reused (resume); a new split
    is not written here (``PreparedData.save_splits``), so an error found later leaves nothing behind."""
    if not cfg.data:
        raise DataError("no data given; pass --data DIR_OR_MANIFEST")
    samples, dropped = filter_short(discover(cfg.data, targets=cfg.targets, group_by=cfg.group_by), cfg)
    if not samples:
        raise DataError(f"{cfg.data}: every sample was dropped as too short ({len(dropped)} samples)")
    spec = TargetSpec.infer(samples, task=cfg.task, target_names=cfg.targets)
    assignment = planned_splits(
        samples, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=seed,
        stratify=spec.kind.stratified, splits_file=splits_file,
    )
    by_split: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    for s in samples:
        by_split[assignment[s.id]].append(s)
    if not by_split["train"]:
        raise DataError(f"{cfg.data}: no training samples after the split")
    return PreparedData(by_split, spec, dropped)


class SequenceDataModule(L.LightningDataModule):
    def __init__(
        self, data: PreparedData, cfg: DataConfig, *, preprocessing: Preprocessing, batch_size: int, seed: int,
        augment: bool, store: "FeatureStore | None" = None, balanced_sampler: bool = False,
    ) -> None:
        super().__init__()
        self.data = data
        self.cfg = cfg
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.balanced_sampler = balanced_sampler
        self.store = store  # a feature cache: samples are served as (T, F) vectors, the CNN is skipped
        workers = default_workers() if cfg.num_workers is None else cfg.num_workers
        # cached rows are memory-mapped reads: worker start-up would cost more than it saves
        self.num_workers = 0 if store is not None and cfg.num_workers is None else workers

    def dataset(self, split: str, *, train: bool) -> SequenceDataset:
        common = dict(
            encode_target=self.data.spec.encode,
            per_image=self.data.spec.per_image,
            sampling=self.cfg.sampling_policy(train=train),
            train=train,
            on_bad_image=self.cfg.on_bad_image,
            shuffle_frames=self.cfg.shuffle_frames,
            seed=self.seed,
        )
        if self.store is not None:
            return cached_dataset(self.data.splits[split], self.store, **common)
        transform = ClipTransform(self.preprocessing, train=train and self.augment, hflip=self.cfg.hflip)
        return SequenceDataset(self.data.splits[split], transform, **common)

    def _loader(self, split: str, *, train: bool) -> DataLoader:
        sampler = None
        if train and self.balanced_sampler:  # rare classes drawn as often as common ones (with replacement)
            weights = self.data.spec.sample_weights(self.data.splits[split])
            sampler = WeightedRandomSampler(weights, num_samples=len(weights), replacement=True)
        if train and sampler is None and is_pack(self.cfg.data):  # shards streamed, each sample once per epoch
            # the trainer's epoch when each epoch's first batch is read: Lightning builds this loader before a
            # resumed run has restored its epoch, which would replay epoch 0's order
            epoch = (lambda: self.trainer.current_epoch) if self.trainer is not None else None
            return stream_loader(self.dataset(split, train=True), batch_size=self.batch_size, seed=self.seed,
                                 num_workers=self.num_workers, epoch=epoch, buffer=self.cfg.shuffle_buffer)
        return DataLoader(
            self.dataset(split, train=train),
            batch_size=self.batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)
