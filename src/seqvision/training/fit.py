"""``fit``: data -> model -> Lightning fit -> best and last checkpoints. The evaluation of the best
checkpoint on the held-out splits is the workflow's (:func:`seqvision.workflows.train_and_evaluate`)."""

from __future__ import annotations

import dataclasses

import json
import logging
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from seqvision.config import RunConfig, keep_legacy_options, save_config, validate
from seqvision.tasks import TargetSpec
from seqvision.data.transforms import resolve_preprocessing
from seqvision.errors import ConfigError
from seqvision.features.cache import CacheKey, FeatureStore, storage_dtype
from seqvision.features.extract import extract_features, planned_rows
from seqvision.features.runtimes import feature_flags, runtime_for_cache
from seqvision.io import atomic_write_text
from seqvision.models.checkpoint import read_checkpoint
from seqvision.models.local_weights import preprocessing_given
from seqvision.models.stage_maps import FrozenStages, StageCut
from seqvision.runtime import default_device, default_workers, inference_dtype, tune_allocator
from seqvision.tasks import task_of
from seqvision.training.checkpoint import AtomicCheckpointIO
from seqvision.training.datamodule import SequenceDataModule, prepare_data
from seqvision.training.epoch_log import EpochLog
from seqvision.training.memory import plan_training_memory
from seqvision.training.module import SequenceTask
from seqvision.training.tracking import Tracking, log_config

log = logging.getLogger("seqvision")

MAXIMIZE = ("val_acc", "val_f1", "val_map")
MAPS_DTYPE = "float16"  # storage of the frozen stages' cached maps: half the disk of float32, ~1e-3 relative


@dataclass
class TrainResult:
    out_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    test_metrics: dict | None = None
    val_metrics: dict | None = None
    reported: list[str] = field(default_factory=list)  # dropped samples and skipped images
    feature_cache: dict | None = None  # folder, images found cached, images computed (frozen backbone)
    # what the evaluation after training needs (seqvision.workflows.train_and_evaluate)
    splits: dict[str, list] = field(default_factory=dict, repr=False)  # the samples of each split
    store: Any = field(default=None, repr=False)  # the frozen backbone's FeatureStore, when it trained on it (not stage maps: evaluation runs the CNN)
    num_workers: int = 0  # the DataLoader workers training used
    is_global_zero: bool = True  # this process reports (the first of a distributed run)
    loggers: list = field(default_factory=list, repr=False)  # Lightning's: MLflow's and W&B's get the final results


def fit(
    cfg: RunConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True, callbacks: Sequence[Any] = (),
    epoch_log: bool = False, checkpoints: bool = True, tracking: Tracking | None = None,
) -> TrainResult:
    """Train a model as ``cfg`` says, writing everything into ``out_dir``.

    Writes ``config.yaml``, ``splits.json``, ``best.ckpt``, ``last.ckpt``, CSV and TensorBoard logs.
    :func:`seqvision.workflows.train_and_evaluate` then evaluates the best checkpoint.
    ``resume=True`` continues from ``out_dir/last.ckpt`` with the saved split.
    ``callbacks``: more Lightning callbacks, added to seqvision's checkpointing and early stopping.
    ``progress``: progress bars (for a terminal); ``epoch_log``: one plain line per epoch (for log files).
    ``checkpoints=False``: no best/last checkpoints (a tuning trial, which only needs its metrics).
    ``tracking``: the loggers (:mod:`seqvision.training.tracking`; default CSV and TensorBoard). Also writes
    ``training.json``: the epochs run and the seconds they took (a resumed run adds its own).
    """
    validate(cfg)
    if cfg.train.precision == "16-mixed" and not torch.cuda.is_available():
        raise ConfigError("--precision 16-mixed needs a CUDA GPU; on a CPU use 32 or bf16-mixed")
    tune_allocator()  # the CNN's activation buffers stay in the heap, from any caller (runtime.tune_allocator)
    out = Path(out_dir)
    continuing = resume  # --resume: this run's saved split is reused, even when it restarts from the beginning
    saved = _resumable(out, resume)  # last.ckpt's saved config when the run continues from it
    resume = saved is not None
    if resume:  # a run started by an older seqvision continues as the model its checkpoint holds
        kept = keep_legacy_options(cfg, saved)
        if kept:
            log.warning("--resume: this run was started before some options existed; it continues with %s", ", ".join(kept))
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)

    # Everything that can be wrong with the data and the options is found before anything is written.
    # A saved split is reused only with --resume; a new run (say, after one that failed before training)
    # makes its own and replaces the file.
    data = prepare_data(cfg.data, seed=cfg.train.seed, splits_file=out / "splits.json" if continuing else None)
    model, prep = _model(cfg, data)
    has_val = bool(data.splits["val"])
    monitor = _checked_monitor(cfg, data.spec, has_val)
    kind = task_of(data.spec)
    for said in kind.options_without_effect(label_smoothing=cfg.train.label_smoothing, loss=cfg.train.loss):
        warnings.warn(said, stacklevel=2)  # loss options of another kind of task: said once, not ignored
    class_weights = kind.class_weights(data.spec, data.splits["train"]) if cfg.train.class_weights == "balanced" else None
    maps = _maps_plan(cfg, model, data)  # fine-tuning the last stages: their input cached, if it can be
    if not cfg.trains_on_cache() and maps is None:  # the CNN runs live: will its largest batch fit?
        workers = default_workers() if cfg.data.num_workers is None else cfg.data.num_workers
        change = plan_training_memory(cfg, model.encoder, data.splits, device=device_of(cfg), num_workers=workers)
        if change:
            log.warning(change)
    out.mkdir(parents=True, exist_ok=True)
    if not continuing or not (out / "splits.json").exists():
        data.save_splits(out / "splits.json")
    task = SequenceTask(model, cfg=cfg, spec=data.spec, preprocessing=prep, class_weights=class_weights)
    store, cache_report = _feature_store(cfg, model, prep, data, progress=progress)
    task.feature_runtime = (cache_report or {}).get("runtime")  # recorded in the checkpoints: what filled the cache
    if maps is not None:
        store, cache_report = _map_store(cfg, model, prep, data, *maps, progress=progress)
        task.maps = maps[0]
    dm = SequenceDataModule(
        data, cfg.data, preprocessing=prep, batch_size=cfg.train.batch_size, seed=cfg.train.seed,
        augment=cfg.data.augment_enabled(frozen=cfg.model.freeze), store=store, balanced_sampler=cfg.train.balanced_sampler,
    )
    save_config(cfg, out / "config.yaml")
    if not has_val:
        warnings.warn("no validation samples: checkpoints follow train_loss and early stopping is off", stacklevel=2)
    trainer = _trainer(cfg, out, monitor=monitor, has_val=has_val, callbacks=callbacks, progress=progress, epoch_log=epoch_log,
                       checkpoints=checkpoints, tracking=tracking, resume=resume)
    last, started = out / "last.ckpt", time.perf_counter()
    with warnings.catch_warnings():
        # the run folder already holds config.yaml and splits.json (and last.ckpt when resuming)
        warnings.filterwarnings("ignore", message=r".*exists and is not empty.*")
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")  # frozen BatchNorm, on purpose
        trainer.fit(task, datamodule=dm, ckpt_path=str(last) if resume else None)
    _record_training(trainer, out / "training.json", time.perf_counter() - started, resumed=resume)

    best = out / "best.ckpt" if (out / "best.ckpt").exists() else last  # ModelCheckpoint's file names
    reported = data.dropped + sorted(set(task.skipped))
    if task.nan_steps_skipped:
        reported.append(f"{task.nan_steps_skipped} training step(s) skipped: the loss was NaN or infinite (--on-nan skip)")
    return TrainResult(
        out, best, last, reported=reported, feature_cache=cache_report, splits=data.splits, store=store if maps is None else None,
        num_workers=dm.num_workers, is_global_zero=trainer.is_global_zero, loggers=list(trainer.loggers),
    )


def _record_training(trainer: L.Trainer, path: Path, seconds: float, *, resumed: bool) -> None:
    """``training.json`` (by the first process): the epochs the run has trained and the seconds its fits took
    (a resumed run adds its part), for ``seqvision compare``."""
    if not trainer.is_global_zero:
        return
    before = json.loads(path.read_text()) if resumed and path.exists() else {}
    seconds += before.get("seconds", 0.0)
    atomic_write_text(path, json.dumps({"epochs": trainer.current_epoch, "seconds": round(seconds, 2)}))


def _model(cfg: RunConfig, data):
    """The run's model and its one resolved preprocessing: the run's, also the encoder's (its probes run at
    the run's size)."""
    d = cfg.data
    with preprocessing_given(d.mean is not None and d.std is not None):
        model = cfg.model.build_model(data.spec.num_outputs, per_step=data.spec.per_image)
    prep = resolve_preprocessing(model.encoder.preprocessing, image_size=d.image_size, resize_size=d.resize_size, mean=d.mean, std=d.std,
                                exact_decode=d.exact_decode, video_decoder=d.video_decoder)
    model.encoder.preprocessing = prep
    return model, prep


def cache_stage_maps(cfg: RunConfig, *, progress: bool = False) -> dict | str:
    """Fill the cache with the frozen stages' maps that :func:`fit` with ``cfg`` (the last stages fine-tuned,
    no augmentation) reads, as its first epoch would, so that runs sharing them find them computed (``tune``'s
    motion trials). Returns the cache's report, or why ``fit`` would run the whole CNN live instead (the
    reason it says: augmentation, a trunk that cannot be cut, the cache budget)."""
    validate(cfg, warn=False)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)  # as fit: random weights are the same ones
    data = prepare_data(cfg.data, seed=cfg.train.seed)
    model, prep = _model(cfg, data)
    plan = maps_plan(cfg, model, data)
    if plan is None or isinstance(plan, str):
        return plan or "the backbone is frozen, or all of it learns, or the cache is off: no stage maps to cache"
    return _map_store(cfg, model, prep, data, *plan, progress=progress)[1]


def _resumable(out: Path, resume: bool) -> dict | None:
    """The saved config of ``out/last.ckpt`` when the run continues from it (with ``--resume``, when that
    file is there and sound), else None; a run folder that already holds a trained run needs ``--resume``."""
    last = out / "last.ckpt"
    if resume and not last.is_file():
        if (out / "best.ckpt").exists():
            raise ConfigError(f"--resume: {last} is missing but {out} holds a trained run; restore last.ckpt or use another --out")
        # killed before the first checkpoint: nothing to continue, so start over (the saved split is reused)
        warnings.warn(f"--resume: {last} does not exist yet; starting the run from the beginning", stacklevel=3)
        resume = False
    if resume:  # a damaged last.ckpt is reported, never fed to the model
        saved = read_checkpoint(last)["seqvision"].get("config")
        return saved if isinstance(saved, dict) else {}
    if (out / "best.ckpt").exists():
        raise ConfigError(f"{out} already holds a trained run; pass --resume to continue it or choose another --out")
    return None


def _trainer(
    cfg: RunConfig, out: Path, *, monitor: str, has_val: bool, callbacks: Sequence[Any], progress: bool, epoch_log: bool,
    checkpoints: bool = True, tracking: Tracking | None = None, resume: bool = False,
) -> L.Trainer:
    """Lightning's Trainer with seqvision's checkpoints (best, and last after every epoch), early stopping,
    logs (``tracking``'s loggers, given the resolved config) and atomic checkpoint writes."""
    loggers = (tracking or Tracking()).build(out, resume=resume)
    log_config(loggers, cfg.to_dict(), out)
    mode = "max" if monitor in MAXIMIZE else "min"
    own_callbacks = [
        ModelCheckpoint(dirpath=out, filename="best", monitor=monitor, mode=mode, enable_version_counter=False),
        # last.ckpt after EVERY epoch, for --resume. Lightning's save_last=True writes it only in epochs
        # where best.ckpt changed, so a run whose validation stopped improving resumed from a stale epoch.
        # Listed after "best", so the best score it carries is the updated one.
        ModelCheckpoint(dirpath=out, filename="last", enable_version_counter=False),
    ] if checkpoints else []
    if epoch_log:
        own_callbacks.append(EpochLog())
    if cfg.train.patience > 0 and has_val:
        own_callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=cfg.train.patience))
    return L.Trainer(
        default_root_dir=out,
        max_epochs=cfg.train.max_epochs,
        accelerator=cfg.train.accelerator,
        devices=cfg.train.devices,
        num_nodes=cfg.train.num_nodes,
        precision=cfg.train.precision,
        gradient_clip_val=cfg.train.grad_clip or None,
        deterministic=cfg.train.deterministic,
        sync_batchnorm=cfg.train.sync_batchnorm,
        callbacks=[*own_callbacks, *callbacks],
        logger=loggers,  # CSV and TensorBoard by default
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=progress,
        enable_checkpointing=checkpoints,
        enable_model_summary=False,
        limit_val_batches=1.0 if has_val else 0,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )


def _checked_monitor(cfg: RunConfig, spec: TargetSpec, has_val: bool) -> str:
    """The metric that picks ``best.ckpt`` and stops early: one that this task logs (checked before the
    first epoch, not after it)."""
    monitor = cfg.train.monitor or ("val_loss" if has_val else "train_loss")
    known = task_of(spec).logged_metrics()
    if monitor not in known:
        raise ConfigError(f"--monitor {monitor}: a {spec.task} run logs {', '.join(known)}; choose one of them")
    if not has_val and monitor.startswith("val_"):
        raise ConfigError(f"--monitor {monitor} needs validation samples, and the split has none")
    return monitor


def _feature_store(cfg: RunConfig, model, prep, data, *, progress: bool):
    """A frozen backbone trains on cached features (building what is missing first), unless the cache is
    off or augmentation changes pixels every epoch (then the CNN must run live, and we say so)."""
    if not cfg.model.freeze or cfg.data.cache == "off":
        return None, None
    if not cfg.trains_on_cache():  # frozen, but the pixels change every epoch
        log.warning(
            "frozen backbone with --augment: augmentation changes the pixels every epoch, so the CNN runs live "
            "and the feature cache is not used (pass --no-augment to train on cached features)"
        )
        return None, None
    device = device_of(cfg)
    # bf16 training computes bf16 features; otherwise --feature-precision (auto: bf16 where the hardware
    # is fast at it, as `seqvision extract` does, so a cache it filled is found; 32: the live features).
    compute = inference_dtype(device, cfg.cnn_precision())
    root = cfg.data.cache_root()
    key = CacheKey.for_encoder(model.encoder, prep, dtype=cfg.data.cache_dtype, compute=compute)
    # --feature-runtime: what runs the frozen CNN (auto: an existing cache's runtime, else the fastest here);
    # the key names it, and the checkpoint records it so evaluation reads these very vectors
    # (refusals on the way name train's flags: its own --precision is the training's)
    with feature_flags():
        runtime = runtime_for_cache(cfg.data.feature_runtime, model.encoder, device, compute, key=key, root=root)
    store = FeatureStore(root, dataclasses.replace(key, runtime=runtime.label))
    samples = [s for split in data.splits.values() for s in split]
    # Extraction draws from torch's RNG (DataLoader seeds): fork it, so a seeded run shuffles and drops
    # out exactly as the same run with the CNN live does.
    with torch.random.fork_rng(devices=[]), feature_flags():
        stats = extract_features(
            samples, model.encoder, prep, store, device=device, precision=str(compute).removeprefix("torch."),
            num_workers=cfg.data.num_workers, on_bad_image=cfg.data.on_bad_image, progress=progress,
            sampling=_cache_sampling(cfg),
        )
    model.encoder.to("cpu")  # Lightning places it for training
    data.dropped.extend(stats.skipped + stats.notes)  # notes: e.g. a truncated video's last frame repeated
    report = {"dir": str(store.dir), "cached": stats.cached, "computed": stats.images, "by_peers": stats.by_peers,
              "images_per_second": round(stats.images_per_second, 1), "runtime": stats.runtime}
    return store, report


def _maps_plan(cfg: RunConfig, model, data) -> tuple[StageCut, CacheKey, Path] | None:
    """:func:`maps_plan`, its reason for running the whole CNN live said once."""
    plan = maps_plan(cfg, model, data)
    if isinstance(plan, str):
        log.warning("%s: the whole CNN runs live every epoch", plan)
        return None
    return plan


def maps_plan(cfg: RunConfig, model, data) -> tuple[StageCut, CacheKey, Path] | str | None:
    """Whether this fine-tuning run reads the frozen stages' cached maps (:mod:`seqvision.models.stage_maps`):
    the cut, the maps' cache key and the cache folder; or why they cannot be cached (augmentation, a trunk that
    cannot be cut, the disk budget), one line; None for a run that fine-tunes no last stages."""
    m = cfg.model
    if m.freeze or not m.trainable_stages or cfg.data.cache == "off":
        return None
    if not cfg.trains_on_maps():
        return (f"fine-tuning the last {m.trainable_stages} stage(s) with augmentation: it changes the pixels every epoch "
                "(pass --no-augment to cache the frozen stages' maps once and run only the last stages)")
    try:
        cut = StageCut.of(model.encoder, m.trainable_stages)
    except ConfigError as exc:
        return str(exc)
    samples = [s for split in data.splits.values() for s in split]
    # the rows the extraction will cache: every image file, and each video's frames its sampling can pick
    # (all of them for random and segments draws)
    rows = planned_rows(samples, _cache_sampling(cfg))
    root = cfg.data.cache_root()
    key = CacheKey.for_encoder(FrozenStages(model.encoder, cut), model.encoder.preprocessing, dtype=MAPS_DTYPE,
                               compute=inference_dtype(device_of(cfg), cfg.cnn_precision()))
    stored = storage_dtype(root, key)  # float32 where float16 could not hold these maps before
    need = rows * cut.row_size * np.dtype(stored).itemsize
    # maps already cached (a resumed run, another seed) count against an explicit budget, not the free disk
    held = sum(f.stat().st_size for f in (root / key.digest).glob("shard-*.npy"))
    budget = cfg.data.cache_budget * 1e9 if cfg.data.cache_budget else 0.9 * _free_bytes(root) + held
    if need > budget:
        return (f"the frozen stages' maps would take about {need / 1e9:.1f} GB ({rows} images x {'x'.join(map(str, cut.shape))}, "
                f"{stored}), over the cache budget of {budget / 1e9:.1f} GB (--cache-budget)")
    return cut, key, root


def _cache_sampling(cfg: RunConfig) -> list:
    """The ``(policy, train)`` pairs that read a cache this run fills: they decide a video's cached frames."""
    return [(cfg.data.sampling_policy(train=True), True), (cfg.data.sampling_policy(train=False), False)]


def _free_bytes(folder: Path) -> float:
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:  # the cache folder may not exist yet
        folder = folder.parent
    return float(shutil.disk_usage(folder).free)


def _map_store(cfg: RunConfig, model, prep, data, cut: StageCut, key: CacheKey, root: Path, *, progress: bool):
    """Cache the frozen stages' maps of every image (one row per image, under ``key``: computed once in the
    precision the CNN trains in); training then runs only the last stages on them."""
    device = device_of(cfg)
    frozen = FrozenStages(model.encoder, cut)
    store = FeatureStore(root, key)
    samples = [s for split in data.splits.values() for s in split]
    with torch.random.fork_rng(devices=[]):
        stats = extract_features(
            samples, frozen, prep, store, device=device, precision=key.compute,
            num_workers=cfg.data.num_workers, on_bad_image=cfg.data.on_bad_image, progress=progress,
            sampling=_cache_sampling(cfg),
        )
    model.encoder.to("cpu")  # Lightning places it for training
    model.encoder.train(model.encoder.training)  # the extraction put the shared frozen stages in eval: they stay so
    data.dropped.extend(stats.skipped + stats.notes)
    log.warning(
        "fine-tuning the last %d stage(s) on cached maps (%s per image, %s, in %s): the frozen stages ran once per "
        "image (%d computed, %d cached); each epoch runs only the last stages", cfg.model.trainable_stages,
        "x".join(map(str, cut.shape)), store.dtype, store.dir, stats.images, stats.cached)
    report = {"dir": str(store.dir), "cached": stats.cached, "computed": stats.images, "by_peers": stats.by_peers,
              "images_per_second": round(stats.images_per_second, 1), "maps": list(cut.shape)}
    return store, report


def device_of(cfg: RunConfig) -> torch.device:
    """Where this process extracts features and evaluates: its GPU unless training was told to use the CPU."""
    return torch.device("cpu") if cfg.train.accelerator == "cpu" else default_device()
