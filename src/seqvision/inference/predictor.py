"""A trained model and its input pipeline, rebuilt from a checkpoint alone, for predict and evaluate."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from seqvision.config import RunConfig, legacy_options
from seqvision.data.dataset import Batch, SequenceDataset, collate
from seqvision.data.pieces import PieceDataset, collate_pieces, concat_images, piece_batches
from seqvision.data.samples import Sample
from seqvision.tasks import TargetSpec
from seqvision.data.transforms import ClipTransform, Preprocessing
from seqvision.data.video_torchcodec import usable_video_decoder
from seqvision.errors import CheckpointError, ConfigError, DataError
from seqvision.features.cache import CacheKey, FeatureStore, default_cache_root
from seqvision.features.dataset import cached_dataset
from seqvision.features.encode import encode_batch, prepare_encoder
from seqvision.features.runtimes import Runtime, check_runtime, choose_runtime
from seqvision.models.memory import inference_chunk_size
from seqvision.models.temporal_shift import frames_of, is_shifted
from seqvision.models.sequence_model import SequenceModel
from seqvision.runtime import inference_dtype, resolve_device, tune_allocator
from seqvision.tasks import task_of
from seqvision.models.checkpoint import read_checkpoint
from seqvision.inference.sharding import sharded

log = logging.getLogger("seqvision")


@dataclass
class Predictions:
    sample_ids: list[str]  # one per output row: per sample, or per image for per-image tasks
    outputs: torch.Tensor  # (B, K) logits / values, or (N, K) per image; float32
    targets: torch.Tensor | None = None  # when the samples carry targets
    skipped: list[str] = field(default_factory=list)
    frames: list[str] = field(default_factory=list)  # per-image tasks: the image of each output row
    sample_frames: dict[str, list[str]] = field(default_factory=dict)  # the images each sample was seen through
    attention: dict[str, list[float]] = field(default_factory=dict)  # attention heads: weight per image
    # with keep_features: each clip's per-image features (T, F) and the output row it feeds (per-sample
    # tasks; several clips of one sample share a row) or its first image's row (per-image tasks)
    clips: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # samples with no rows: --on-bad-image skip left them out


class Predictor:
    """Runs a :class:`SequenceModel` with the preprocessing and sampling it was trained with."""

    def __init__(
        self, model: SequenceModel, *, cfg: RunConfig, spec: TargetSpec, preprocessing: Preprocessing,
        thresholds: list[float] | None = None, precision: str = "auto", source: dict | None = None,
        runtime: str = "auto", feature_runtime: str = "torch",
    ) -> None:
        self.model = model.eval()
        model.encoder.preprocessing = preprocessing  # the run's (its image size), for the encoder's probes too
        self.source = source or {}  # where the model came from: checkpoint path, epoch, versions (for reports)
        # images per CNN pass: samples are loaded and encoded in pieces of at most this many images, so
        # memory is bounded by it, not by the images in a sample (the run's --chunk-size, else chosen
        # from the backbone, the image size and the free memory on first use)
        self._chunk_size: int | None = cfg.model.chunk_size
        self.cfg = cfg
        self.spec = spec
        self.preprocessing = preprocessing
        self.task = task_of(spec, thresholds)  # what the outputs mean (multi-label: with its thresholds)
        self.precision = precision  # the CNN's: auto (bf16 where the hardware is fast at it) | 32 | bf16
        # the inference runtime of the live CNN (features.runtimes: auto | torch | onnxruntime | openvino),
        # and the one that filled the feature cache a frozen run trained on (its key names it)
        self.runtime = runtime
        self.feature_runtime = feature_runtime
        self._cnn: tuple[tuple, torch.nn.Module] | None = None  # the encoder's inference form, per (device, dtype, runtime)
        self._keys: dict[tuple[str, str], CacheKey] = {}
        self.shard: tuple[int, int] | None = None  # (rank, world size): run() predicts its share and gathers

    @classmethod
    def load(
        cls, path: str | Path, *, device: str | torch.device = "cpu", precision: str = "auto", runtime: str = "auto",
    ) -> "Predictor":
        """Rebuild from a checkpoint file alone (loaded with ``weights_only=True``). ``precision`` is the
        CNN's compute precision: ``auto`` is bf16 where the hardware is fast at it (with real ImageNet
        weights, features within a cosine of about 0.999 of fp32: ``benchmarks/feature_precision.py``;
        the heads always run in fp32), ``32`` computes fp32 features. ``runtime``: what runs the CNN's
        forward (:mod:`seqvision.features.runtimes`; ``auto``: the fastest on this machine)."""
        device = resolve_device(device)  # a bad device, precision or runtime fails before any loading
        check_runtime(runtime, device, inference_dtype(device, precision))
        tune_allocator()  # the CNN's activation buffers stay in the heap, from any caller (runtime.tune_allocator)
        raw = read_checkpoint(path)
        meta = raw["seqvision"]
        try:
            cfg = RunConfig.from_dict(legacy_options(meta["config"]))
            spec = TargetSpec.from_dict(meta["targets"])
            prep = Preprocessing.from_dict(meta["preprocessing"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path}: incomplete seqvision metadata ({exc})") from None
        decoder, why = usable_video_decoder(prep.video_decoder)
        if why is not None:
            log.warning("%s", why)
            prep = dataclasses.replace(prep, video_decoder=decoder)  # and the cache key with it: PyAV's features
        # weights="none": the checkpoint holds every parameter, nothing is downloaded
        model = cfg.model.build_model(spec.num_outputs, weights="none", per_step=spec.per_image)
        state = {k.removeprefix("model."): v for k, v in raw["state_dict"].items() if k.startswith("model.")}
        if cfg.model.backbone.startswith("timm/") and "encoder.trunk.forward_head" in model.state_dict() and "encoder.trunk.forward_head" not in state:
            raise CheckpointError(
                f"checkpoint {path} was trained with an older seqvision that pooled timm models its own way (a ViT "
                "gave one feature per image); its features cannot be reproduced faithfully: train it again"
            )
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint {path}: weights do not fit the model it describes ({str(exc)[:300]})") from None
        source = {"checkpoint": str(path), "epoch": raw.get("epoch"), "versions": meta.get("versions") or {}}
        # a checkpoint from before runtimes existed trained on torch's features (if on any cached ones)
        return cls(model.to(device), cfg=cfg, spec=spec, preprocessing=prep, thresholds=meta.get("thresholds"),
                   precision=precision, source=source, runtime=runtime, feature_runtime=meta.get("feature_runtime") or "torch")

    @property
    def chunk_size(self) -> int:
        """Images per CNN pass (and per loaded piece of a sample): set, the run's ``--chunk-size``, or
        :func:`inference_chunk_size` for this encoder on this device."""
        if self._chunk_size is None:
            self._chunk_size = inference_chunk_size(self.model.encoder, self.device, image_size=self.preprocessing.image_size)
        return self._chunk_size

    @chunk_size.setter
    def chunk_size(self, value: int | None) -> None:
        if value is not None and value < 1:
            raise ValueError(f"chunk_size must be at least 1, got {value}")
        self._chunk_size = value

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _cache_key(self, dtype: str, compute: str) -> CacheKey:
        """This model's feature-cache key, computed once per storage and compute dtype (it hashes every
        weight of the encoder: 45 MB for ResNet-18), for the runtime that filled the cache it trained on."""
        if (dtype, compute) not in self._keys:
            self._keys[dtype, compute] = CacheKey.for_encoder(
                self.model.encoder, self.preprocessing, dtype=dtype, compute=getattr(torch, compute), runtime=self.feature_runtime,
            )
        return self._keys[dtype, compute]

    def cached_store(self, samples: list[Sample]) -> FeatureStore | None:
        """The feature cache a frozen run trained on, when it holds every image of ``samples`` for this
        model at this precision (what ``evaluate`` and ``report`` then read, as training did); None
        otherwise (another backbone or precision, a video sample, an image not extracted): the CNN runs."""
        d = self.cfg.data
        if not self.cfg.trains_on_cache() or any(s.video is not None for s in samples):
            return None
        root = d.cache_root()
        key = self._cache_key(d.cache_dtype, str(self.compute_dtype).removeprefix("torch."))
        if not (root / key.digest / "meta.json").is_file():
            return None
        store = FeatureStore(root, key)
        try:
            if store.missing(f.path for s in samples for f in s.frames):
                return None
        except OSError:  # a file gone since: the live path reports it, naming the sample
            return None
        return store

    def _inference_encoder(self) -> torch.nn.Module:
        """The encoder prepared for inference (see :func:`prepare_encoder`), built on first use. It may be
        a converted copy: load new weights into a new Predictor, not into this one's model."""
        key = (self.device, self.compute_dtype, self.runtime)
        if self._cnn is None or self._cnn[0] != key:
            root = self._runtimes_root()
            runtime = choose_runtime(self.runtime, self.model.encoder, self.device, self.compute_dtype, root=root)
            self._cnn = (key, prepare_encoder(self.model.encoder, self.device, dtype=self.compute_dtype, runtime=runtime, root=root))
        return self._cnn[1]

    def _runtimes_root(self) -> Path:
        """Where the runtimes' ONNX files and remembered choices go: the run's feature cache root where it
        exists (the machine that trained it, as its ``--cache`` said), else the default cache root (a
        checkpoint copied elsewhere names a folder of another machine)."""
        root = self.cfg.data.cache_root()
        return root if root.is_dir() else default_cache_root()

    def own_runtime(self) -> str:
        """The runtime for this run's CNN where it runs live (cache misses in ``evaluate``, ``report`` and
        ``train``'s own evaluation): for a frozen run on cached features, the runtime its checkpoint
        recorded filling them (by name: the features it trained on), where that runtime runs here;
        otherwise :meth:`RunConfig.cnn_runtime`."""
        if not self.cfg.trains_on_cache():
            return self.cfg.cnn_runtime()
        name = Runtime.from_label(self.feature_runtime).name
        try:
            check_runtime(name, self.device, self.compute_dtype)
        except ConfigError as exc:
            log.warning("the run's features were computed by %s, which cannot run here (%s): the CNN runs on auto",
                        self.feature_runtime, exc)
            return "auto"
        return name

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the CNN computes in on this device."""
        return inference_dtype(self.device, self.precision)

    def dataset(
        self, samples: list[Sample], *, on_bad_image: str | None = None, with_targets: bool = False,
        store: FeatureStore | None = None, mirror: bool = False,
    ) -> SequenceDataset:
        """The samples as the model was evaluated in training: images through the evaluation transform,
        or cached ``(T, F)`` features when ``store`` is given; ``mirror``: every image flipped left-right
        (a diagnostic: the CNN sees the mirrored scene)."""
        d = self.cfg.data
        options = dict(
            encode_target=self.spec.encode if with_targets else None,
            per_image=self.spec.per_image,
            sampling=d.sampling_policy(train=False),  # as the model was evaluated in training
            on_bad_image=on_bad_image or d.on_bad_image,
            shuffle_frames=d.shuffle_frames,
            seed=self.cfg.train.seed,
        )
        if store is not None:
            return cached_dataset(samples, store, **options)
        return SequenceDataset(samples, ClipTransform(self.preprocessing, train=False, mirror=mirror), **options)

    def feature_batches(self, dataset: SequenceDataset, *, batch_size: int = 8, num_workers: int = 0) -> Iterator[Batch]:
        """Batches of ``batch_size`` samples whose ``images`` are per-image features ``(N, F)`` float32.

        From a feature cache the rows are read. Otherwise each sample's images are loaded in pieces of
        at most ``chunk_size`` (:mod:`seqvision.data.pieces`) and every CNN pass takes at most that many
        images, packed across samples (the same fast path as ``extract``: channels_last, bf16 where
        fast); only the features of a sample are kept, so memory is bounded by the chunk and the
        features, not by the number of images in a sample or a batch. A model with a temporal shift is the
        exception: its CNN reads each image's neighbours, so every clip reaches it whole and memory is
        bounded by the longest clip (after frame sampling) as well as by the chunk.
        """
        if dataset.source.carries == "features":
            loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=num_workers)
            for batch in loader:
                batch.images = batch.images.to(self.device)
                yield batch
            return
        shifted = is_shifted(self.model.encoder)  # its images see their neighbours: clips go whole to the CNN
        pieces = PieceDataset(dataset, self.chunk_size, whole_clips=shifted)
        loader = DataLoader(
            pieces, batch_sampler=piece_batches(pieces.pieces, self.chunk_size), collate_fn=collate_pieces,
            num_workers=num_workers,
        )
        net, dtype = self._inference_encoder(), self.compute_dtype
        pending: list[dict] = []
        notes = list(pieces.notes)  # planning facts, reported with the first batch
        sample = None  # the sample being assembled: its item, per-clip features and frames kept
        for items in loader:
            images = concat_images(items)  # (n, 3, S, S), n <= chunk_size
            lengths = torch.tensor([len(it["images"]) for it in items if it["images"] is not None]) if shifted else None
            with frames_of(net, lengths, self.device):  # a shifted CNN's clips, each whole (no-op otherwise)
                features = encode_batch(net, images, dtype) if images is not None else None  # (n, F) fp32
            at = 0
            for it in items:
                if it["error"]:
                    raise DataError(it["error"])
                piece = pieces.pieces[it["piece"]]
                if sample is None:
                    sample = {"item": dataset.new_item(piece.sample), "features": {}, "used": {}}
                sample["item"]["skipped"].extend(it["skipped"])
                if it["images"] is not None:
                    n = len(it["images"])
                    sample["features"].setdefault(piece.clip, []).append(features[at : at + n])
                    sample["used"].setdefault(piece.clip, []).extend(it["kept"])
                    at += n
                if piece.last:
                    order = sorted(sample["features"])
                    clips = [torch.cat(sample["features"][c]) for c in order]  # (T_c, F) each
                    used = [f for c in order for f in sample["used"][c]]
                    sample["item"]["carries"] = "features"  # encoded here: the heads run on them
                    sample["item"]["skipped"] = list(dict.fromkeys(sample["item"]["skipped"]))  # once per sample
                    pending.append(dataset.finish(piece.sample, sample["item"], clips, used))
                    sample = None
                    if len(pending) == batch_size:
                        yield _with_notes(collate(pending), notes)
                        pending, notes = [], []
        if pending or notes:
            yield _with_notes(collate(pending), notes)

    def run(
        self, samples: list[Sample], *, batch_size: int = 8, num_workers: int = 0, on_bad_image: str | None = None,
        with_targets: bool = False, store: FeatureStore | None = None, keep_features: bool = False, mirror: bool = False,
    ) -> Predictions:
        """Outputs for every sample (in order), batched; bad input raises or is skipped and reported.

        With ``shard = (rank, world)`` (set by predict, evaluate and report under torchrun), this process
        predicts every ``world``-th sample and the shares are gathered (:mod:`seqvision.inference.sharding`):
        every process returns the outputs of all ``samples``, in their order.
        """
        options = dict(batch_size=batch_size, num_workers=num_workers, on_bad_image=on_bad_image, with_targets=with_targets,
                       store=store, keep_features=keep_features, mirror=mirror)
        if self.shard is not None and self.shard[1] > 1:
            return sharded(lambda share: self._run(share, **options), samples, *self.shard)
        return self._run(samples, **options)

    @torch.inference_mode()
    def _run(
        self, samples: list[Sample], *, batch_size: int = 8, num_workers: int = 0, on_bad_image: str | None = None,
        with_targets: bool = False, store: FeatureStore | None = None, keep_features: bool = False, mirror: bool = False,
    ) -> Predictions:
        """:meth:`run` in this process, on ``samples`` alone.

        The CNN runs in passes of at most ``chunk_size`` images (see :meth:`feature_batches`), so any
        number of images per sample fits in bounded memory. With ``store`` (a frozen backbone's feature
        cache, whose key must match this model's encoder), the features are read from the cache and only
        the heads run. ``keep_features``: also each clip's per-image features (``Predictions.clips``), so
        variants of the sequences can be evaluated without running the CNN again. ``mirror``: the images
        flipped left-right (not from a cache).
        """
        if mirror and store is not None:
            raise ValueError("mirrored images are not in the feature cache: run the CNN (store=None)")
        if store is not None:
            # other weights, preprocessing or pooling: its rows are not this model's features (a store of
            # another runtime's, handed over on purpose, is: they agree to rounding)
            if dataclasses.replace(self._cache_key(store.key.dtype, store.key.compute), runtime=store.key.runtime) != store.key:
                raise CheckpointError(f"the feature cache {store.dir} was not computed with this checkpoint's backbone and preprocessing")
        if with_targets:
            self.spec.check(samples)  # unknown labels fail here, naming the sample, before any compute
        ids, outputs, targets, skipped, frames, left_out = [], [], [], [], [], []
        sample_frames: dict[str, list[str]] = {}
        attention: dict[str, list[float]] = {}
        dataset = self.dataset(samples, on_bad_image=on_bad_image, with_targets=with_targets, store=store, mirror=mirror)
        clips: list[tuple[int, torch.Tensor]] = []
        for batch in self.feature_batches(dataset, batch_size=batch_size, num_workers=num_workers):
            batch.raise_errors()
            skipped.extend(batch.skipped)
            left_out.extend(batch.left_out)
            if not batch.sample_ids:
                continue
            features = batch.images  # (N, F)
            out = self.model.forward_features(features, batch.lengths)  # (C, K) or (N, K) per image
            if keep_features:
                first = len(ids)  # the output row of this batch's first sample (or image)
                starts = torch.cumsum(batch.lengths, 0) - batch.lengths
                for c, part in enumerate(features.float().cpu().split(batch.lengths.tolist())):
                    owner = batch.groups[c] if batch.groups is not None else c
                    clips.append((first + int(starts[c]) if self.spec.per_image else first + int(owner), part))
            weights = getattr(self.model.temporal_head, "last_attention", None)  # (C, T) for attention heads
            at = 0
            for c, n in enumerate(batch.lengths.tolist()):
                sample_id = batch.sample_ids[batch.groups[c] if batch.groups is not None else c]
                sample_frames.setdefault(sample_id, []).extend(batch.frames[at : at + n])
                if weights is not None and batch.groups is None:
                    attention[sample_id] = [float(w) for w in weights[c, :n]]
                at += n
            if self.spec.per_image:
                clip_ids = [batch.sample_ids[g] for g in (batch.groups.tolist() if batch.groups is not None else range(len(batch.lengths)))]
                ids.extend(i for i, n in zip(clip_ids, batch.lengths.tolist()) for _ in range(n))
                frames.extend(batch.frames)
            else:
                out = batch.merge_clips(out)  # (B, K)
                ids.extend(batch.sample_ids)
            outputs.append(out.float().cpu())
            if with_targets:
                targets.append(batch.targets)
        k = self.spec.num_outputs
        return Predictions(
            ids,
            torch.cat(outputs) if outputs else torch.empty(0, k),
            torch.cat(targets) if targets else None,
            skipped,
            frames,
            sample_frames,
            attention,
            clips,
            left_out,
        )

    @property
    def thresholds(self) -> list[float]:
        """Multi-label decision thresholds (one per label; 0.5 each for other tasks)."""
        return self.task.thresholds

    def rows(self, predictions: Predictions) -> list[dict]:
        """One dict per sample (per image for per-image tasks, with ``image``): ``sample``, ``prediction``
        (a class; ``;``-joined classes for multi-label; the value(s) for regression), then a probability
        (or value) per output."""
        task, rows = self.task, []
        frames = predictions.frames or [None] * len(predictions.sample_ids)
        names = output_columns(task.names)
        for sample_id, frame, out in zip(predictions.sample_ids, frames, task.values(predictions.outputs)):
            row: dict = {"sample": sample_id}
            if task.per_image:
                row["image"] = frame
            row["prediction"] = task.prediction(out)
            row.update({name: round(float(v), 6) for name, v in zip(names, out)})
            rows.append(row)
        return rows


def _with_notes(batch: Batch, notes: list[str]) -> Batch:
    batch.skipped[:0] = notes
    return batch


RESERVED_COLUMNS = ("sample", "image", "prediction")


def output_columns(names: list[str], reserved: tuple[str, ...] = RESERVED_COLUMNS) -> list[str]:
    """Column names of the per-output values: the class (or target) names, except that one equal to a
    fixed column (``reserved``: ``sample``, ``image``, ``prediction``; a stream adds ``frame`` and
    ``time``) becomes ``p_<name>``, so no value overwrites another."""
    taken = set(names)
    out = []
    for name in names:
        column = name
        while column in reserved or (column != name and column in taken):
            column = f"p_{column}"
        taken.add(column)
        out.append(column)
    return out
