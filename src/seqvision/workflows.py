"""The jobs the command line and the Python API share, each one whole: train and evaluate, evaluate,
report, predict, extract. They sit on top of every other module: training fits, evaluation measures,
inference predicts; a workflow is what strings them together for a user."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from seqvision.config import RunConfig, validate
from seqvision.errors import ConfigError
from seqvision.data.discovery import discover
from seqvision.data.transforms import resolve_preprocessing
from seqvision.evaluation.evaluate import evaluate, evaluate_samples, report
from seqvision.evaluation.html_report import metrics_logs
from seqvision.features.cache import SHARD_ROWS, CacheKey, FeatureStore
from seqvision.features.extract import ExtractStats, extract_features
from seqvision.features.runtimes import check_runtime, feature_flags, runtime_for_cache
from seqvision.inference.predict import predict
from seqvision.inference.predictor import Predictor
from seqvision.models.backbones import build_backbone
from seqvision.models.local_weights import preprocessing_given
from seqvision.runtime import default_device, inference_dtype, resolve_device

if TYPE_CHECKING:
    from seqvision.training.fit import TrainResult
    from seqvision.training.tracking import Tracking

__all__ = ["train_and_evaluate", "evaluate", "report", "predict", "extract"]


def train_and_evaluate(
    cfg: RunConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True, callbacks: Sequence[Any] = (),
    epoch_log: bool = False, tracking: "Tracking | None" = None,
) -> "TrainResult":
    """Train as ``cfg`` says (:func:`seqvision.training.fit.fit`), then evaluate the best checkpoint on the
    validation and test splits: ``val/`` and ``test/`` in ``out_dir`` (metrics.json, plots, report.html;
    per group when the data has groups; diagnostics as ``cfg.train.diagnostics`` says).

    ``resume=True`` continues from ``out_dir/last.ckpt`` with the saved split. ``callbacks``: more
    Lightning callbacks. ``progress``: progress bars (for a terminal); ``epoch_log``: one plain line per
    epoch (for log files). ``tracking``: the loggers (default CSV and TensorBoard); MLflow and W&B also get
    the final metrics, the evaluation folders and the checkpoint (:func:`seqvision.training.tracking.log_results`).
    """
    from seqvision.training.fit import device_of, fit  # Lightning: only training loads it
    from seqvision.training.tracking import log_results

    result = fit(cfg, out_dir, resume=resume, progress=progress, callbacks=callbacks, epoch_log=epoch_log, tracking=tracking)
    if not result.is_global_zero:  # one process of a distributed run reports
        return result
    # The CNN evaluates in the precision it trained in; a frozen one reads the features it trained on, and
    # computes what the cache misses on the runtime that filled it (refusals name train's --feature-* flags)
    with feature_flags() if cfg.trains_on_cache() else contextlib.nullcontext():
        predictor = Predictor.load(result.best_checkpoint, device=device_of(cfg), precision=cfg.cnn_precision(), runtime=cfg.cnn_runtime())
        predictor.runtime = predictor.own_runtime()
        for split in ("val", "test"):
            samples = result.splits.get(split)
            if not samples:
                continue
            ev = evaluate_samples(
                predictor, samples, result.out_dir / split, batch_size=cfg.train.batch_size, num_workers=result.num_workers,
                on_bad_image=cfg.data.on_bad_image, source=f"the {split} split",
                history_csv=metrics_logs(result.out_dir), store=result.store,
                per_group=any(s.group is not None for s in samples), diagnostics=cfg.train.diagnostics,
            )
            setattr(result, f"{split}_metrics", ev.metrics)
            result.reported.extend(m for m in ev.skipped if m not in result.reported)
    log_results(result.loggers, result.out_dir, {"val": result.val_metrics, "test": result.test_metrics})
    return result


def extract(
    cfg: RunConfig, *, out: str | Path | None = None, batch_size: int = 64, device: str | torch.device | None = None,
    compile: bool = False, content_hash: bool = False, shard_rows: int = SHARD_ROWS, progress: bool = True,
) -> tuple[ExtractStats, FeatureStore]:
    """Fill the feature cache with what ``train --freeze`` with the same ``cfg`` will read: every image of
    ``cfg.data.data`` (every video frame its training and evaluation sampling can pick) through the frozen
    backbone of ``cfg.model``, with the run's preprocessing, in ``cfg.data.feature_precision``, run by
    ``cfg.data.feature_runtime`` (:func:`~seqvision.features.runtimes.runtime_for_cache`), stored as
    ``cfg.data.cache_dtype``.

    ``out``: the cache folder (default: ``cfg.data.cache`` when it names one, else ``$SEQVISION_CACHE`` or
    ``~/.cache/seqvision/features``). Returns the statistics and the store (``store.dir`` is the key's folder).
    """
    if not isinstance(cfg, RunConfig):
        raise TypeError(
            "seqvision.extract takes the run's RunConfig: seqvision.extract(RunConfig(data=DataConfig(data=ROOT), "
            f"model=ModelConfig(backbone=..., freeze=True))), not {type(cfg).__name__}"
        )
    validate(RunConfig(data=cfg.data, model=cfg.model), warn=False)  # extraction has no training options to check
    d, m = cfg.data, cfg.model
    device = resolve_device(device) if device else default_device()
    compute = inference_dtype(device, d.feature_precision)
    # --compile is torch's: auto then means torch; with another runtime it is refused, before any work
    requested = "torch" if compile and d.feature_runtime == "auto" else d.feature_runtime
    if compile and requested != "torch":
        raise ConfigError(f"--compile is torch's (torch.compile): not with --runtime {requested}; drop one of them")
    check_runtime(requested, device, compute)
    with preprocessing_given(d.mean is not None and d.std is not None):
        encoder = build_backbone(m.backbone, weights=m.weights, pool=m.pool, drop_stages=m.drop_stages)
    prep = resolve_preprocessing(encoder.preprocessing, image_size=d.image_size, resize_size=d.resize_size, mean=d.mean, std=d.std,
                                exact_decode=d.exact_decode, video_decoder=d.video_decoder)
    encoder.preprocessing = prep  # one resolved preprocessing: the oneDNN probe runs at the size extracted
    folder = Path(out) if out else d.cache_root()
    key = CacheKey.for_encoder(encoder, prep, dtype=d.cache_dtype, compute=compute)
    runtime = runtime_for_cache(requested, encoder, device, compute, key=key, root=folder)  # the key names it
    store = FeatureStore(folder, dataclasses.replace(key, runtime=runtime.label), content_hash=content_hash, shard_rows=shard_rows)
    stats = extract_features(
        discover(d.data, require_labels=False, group_by=d.group_by), encoder, prep, store, batch_size=batch_size,
        num_workers=d.num_workers, device=device, precision=str(compute).removeprefix("torch."), compile=compile,
        on_bad_image=d.on_bad_image, progress=progress,
        sampling=[(d.sampling_policy(train=True), True), (d.sampling_policy(train=False), False)],
    )
    return stats, store
