"""Evaluate a checkpoint on labelled data: metrics, ``metrics.json`` and the confusion-matrix plot."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from seqvision.data.discovery import discover
from seqvision.data.samples import Sample
from seqvision.data.splits import read_split_file
from seqvision.tasks import TargetSpec
from seqvision.errors import CheckpointError, DataError
from seqvision.evaluation.diagnostics import diagnose, resolve_mode
from seqvision.evaluation.html_report import AttentionCase, ErrorCase, metrics_logs, write_html_report
from seqvision.evaluation.report import confusion_matrix_png, write_metrics
from seqvision.features.cache import FeatureStore
from seqvision.inference.predictor import Predictor
from seqvision.io import atomic_write, atomic_write_text
from seqvision.redact import without_password
from seqvision.runtime import inference_group


@dataclass
class EvaluationResult:
    metrics: dict
    files: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def check_task_matches(predictor: Predictor, samples: list[Sample], source: str) -> None:
    """Every sample must be encodable for the checkpoint's task. When one is not and the data holds
    another kind of target (a classifier on regression data, ...), say so; else name the sample."""
    spec = predictor.spec
    try:
        spec.check(samples)
        return
    except DataError as exc:
        problem = exc
    try:
        found = TargetSpec.infer(samples).kind
    except DataError:
        raise problem from None
    if found is spec.kind:
        raise problem
    raise CheckpointError(
        f"the checkpoint is a {spec.task} model ({', '.join(spec.class_names or spec.target_names)}) but {source} "
        f"holds {found.targets_are} ({problem}); evaluate it on data of its own task"
    )


def evaluate_samples(
    predictor: Predictor, samples: list[Sample], out_dir: Path | None = None, *, batch_size: int = 8,
    num_workers: int = 0, on_bad_image: str | None = None, source: str = "the data",
    history_csv: list[Path] | None = None, store: FeatureStore | None = None, per_group: bool = False,
    diagnostics: str = "auto",
) -> EvaluationResult:
    """Metrics of ``predictor`` on ``samples``. With ``out_dir``: ``metrics.json``, the confusion-matrix
    plot and a self-contained ``report.html`` (with training curves from ``history_csv`` when given).
    ``store``: a frozen backbone's feature cache to read the features from instead of running the CNN.
    ``per_group``: also the metrics of each group of samples (see ``per_group_metrics``).
    ``diagnostics``: the same model on shuffled, reversed, single-image (and with ``full``, mirrored)
    variants of the samples (:mod:`seqvision.evaluation.diagnostics`): ``off``, ``fast`` (no mirror: no
    extra CNN pass), ``full``, or ``auto`` (full up to 2000 images in the split, else fast)."""
    mode = resolve_mode(diagnostics)  # auto is settled once the images of the split are known
    check_task_matches(predictor, samples, source)
    diagnostics_seconds = 0.0
    if per_group and not any(s.group is not None for s in samples):
        raise DataError(
            f"--per-group: no sample of {source} has a group; give the data a 'group' column, or --group-by "
            "COLUMN (a manifest) / --group-by REGEX (a folder, matched on the sample names)"
        )
    started = time.perf_counter()
    preds = predictor.run(
        samples, batch_size=batch_size, num_workers=num_workers, on_bad_image=on_bad_image, with_targets=True, store=store,
        keep_features=mode != "off",
    )
    seconds = time.perf_counter() - started
    metrics = _metrics(predictor, preds.outputs, preds.targets, preds.sample_ids)
    if per_group:
        metrics.update(per_group_metrics(predictor, preds, {s.id: s.group for s in samples}))
    if mode != "off" and len(preds.sample_ids):
        started = time.perf_counter()
        metrics["diagnostics"] = _diagnostics(predictor, samples, preds, mode, batch_size=batch_size, num_workers=num_workers,
                                              on_bad_image=on_bad_image)
        diagnostics_seconds = time.perf_counter() - started  # in the report, not metrics.json (it stays deterministic)
    preds.clips = []  # the kept features are not needed any more
    if preds.skipped:
        metrics["skipped"] = preds.skipped
    result = EvaluationResult(metrics, skipped=preds.skipped)
    if out_dir is not None:
        out_dir = Path(out_dir)
        result.files.append(write_metrics(metrics, out_dir))
        png = None
        if "confusion_matrix" in metrics:  # drawn once: the PNG file and the report's plot
            cm = metrics["confusion_matrix"]
            png = confusion_matrix_png(cm["matrix"], cm["labels"])
            path = out_dir / "confusion_matrix.png"
            atomic_write(path, lambda tmp: tmp.write_bytes(png))
            result.files.append(path)
        result.files.append(
            write_html_report(
                out_dir / "report.html", metrics=metrics, title=f"seqvision evaluation: {source}",
                history_csv=history_csv, errors=confident_errors(predictor, preds), attention=attention_cases(predictor, preds),
                confusion_png=png, run=run_summary(predictor, source, len(samples), seconds, cached=store is not None),
                diagnostics=metrics.get("diagnostics"), diagnostics_seconds=diagnostics_seconds,
            )
        )
    return result


def run_summary(predictor: Predictor, source: str, num_samples: int, seconds: float, *, cached: bool = False) -> dict[str, str]:
    """What was evaluated, in words, for the report: the model, how it was trained, the data and the versions."""
    cfg, model = predictor.cfg, predictor.cfg.model
    prep = predictor.preprocessing
    backbone = "frozen" if model.freeze else f"last {model.trainable_stages} stage(s) fine-tuned" if model.trainable_stages else "fine-tuned"
    head = f"{model.head}, hidden {model.hidden_size}, {model.num_layers} layer(s)" + (", bidirectional" if model.bidirectional else "")
    if model.temporal_diff:
        head += ", temporal differences"
    sampling = cfg.data.sampling + (f", {cfg.data.num_frames} frames" if cfg.data.num_frames else ", all frames")
    augment = cfg.data.augment_enabled(frozen=model.freeze)
    source_info = predictor.source
    epoch = source_info.get("epoch")
    return {
        "checkpoint": source_info.get("checkpoint", "(in memory)") + (f" (after epoch {epoch + 1})" if isinstance(epoch, int) else ""),
        "backbone": f"{model.backbone}, weights {model.weights}, pool {model.pool}, {backbone}",
        "temporal head": head,
        "task": f"{predictor.spec.task}: {predictor.spec.num_outputs} output(s)",
        "trained on": f"{cfg.data.data} (split seed {cfg.train.seed}" + (f", groups by {cfg.data.group_by})" if cfg.data.group_by else ")"),
        "training": f"batch {cfg.train.batch_size}, lr {cfg.train.lr:g}, up to {cfg.train.max_epochs} epochs, precision {cfg.train.precision}, "
                    f"augmentation {'on' if augment else 'off'}{' with flip' if augment and cfg.data.hflip else ''}",
        "frames": sampling,
        "preprocessing": f"{prep.image_size}px crop of {prep.resize_size}px ({prep.interpolation}), mean {list(prep.mean)}, std {list(prep.std)}",
        "evaluated": f"{source}: {num_samples} samples in {seconds:.1f} s, CNN in {str(predictor.compute_dtype).removeprefix('torch.')}"
                     + (" (features from the cache)" if cached else "") + f", {time.strftime('%Y-%m-%d %H:%M')}",
        "versions": ", ".join(f"{k} {v}" for k, v in sorted((source_info.get("versions") or {}).items())) or "unknown",
    }


def _diagnostics(predictor: Predictor, samples: list[Sample], preds, mode: str, **loader) -> dict:
    """The variants of :func:`diagnose` for ``preds`` (which kept its features); ``full`` (``auto`` for a
    split of at most 2000 images) also runs the CNN on the mirrored images."""
    mode = resolve_mode(mode, sum(len(frames) for frames in preds.sample_frames.values()))
    mirrored, note = None, None
    if mode == "full":  # the only variant that needs the CNN again: the pixels change
        mirrored = predictor.run(samples, mirror=True, **loader)
        if mirrored.sample_ids != preds.sample_ids or mirrored.frames != preds.frames:
            # e.g. a frozen run read the cache while the mirrored pass decoded files that changed since
            mirrored, note = None, "mirrored variant left out: the mirrored pass read other images than the evaluation (bad or changed files)"
    found = diagnose(predictor, preds, lambda o, t, i: _metrics(predictor, o, t, i), mirrored=mirrored)
    if note:
        found["findings"].append(note)
    found["mode"] = mode
    return found


def _metrics(predictor: Predictor, outputs: torch.Tensor, targets: torch.Tensor, sample_ids: list[str]) -> dict:
    """The task's metrics of output rows against their targets."""
    metrics = predictor.task.metrics(outputs, targets)
    if predictor.task.per_image:  # metrics over images; samples counted apart
        metrics["num_images"], metrics["num_samples"] = metrics["num_samples"], len(set(sample_ids))
    return metrics



def per_group_metrics(predictor: Predictor, preds, groups: dict[str, str | None]) -> dict:
    """``per_group``: the headline metrics of each group's samples (worst first), and across groups
    ``num_groups``, the mean and the worst value of the first figure (``group_mean_accuracy``,
    ``group_worst_accuracy``, ...). Samples without a group belong to no group."""
    rows: dict[str, list[int]] = {}
    for i, sample_id in enumerate(preds.sample_ids):
        group = groups.get(sample_id)
        if group is not None:
            rows.setdefault(group, []).append(i)
    if not rows:
        return {}
    keys = predictor.task.headline
    per_group = {}
    for group, idx in rows.items():
        index = torch.tensor(idx)
        found = _metrics(predictor, preds.outputs[index], preds.targets[index], [preds.sample_ids[i] for i in idx])
        per_group[group] = {k: found[k] for k in ("num_samples", "num_images", *keys) if k in found}
    key, sign = keys[0], (-1 if predictor.task.lower_is_better else 1)  # worst first: the lowest accuracy, the highest error
    ordered = sorted(per_group.items(), key=lambda item: (sign * item[1][key], item[0]))
    values = [stats[key] for _, stats in ordered]
    return {
        "num_groups": len(ordered),
        f"group_mean_{key}": sum(values) / len(values),
        f"group_worst_{key}": values[0],
        "per_group": dict(ordered),
    }


def confident_errors(predictor: Predictor, preds, limit: int = 8) -> list[ErrorCase]:
    """The samples the model got wrong with the most confidence (largest errors for regression)."""
    if predictor.task.per_image or preds.targets is None or not len(preds.sample_ids):
        return []
    return [
        ErrorCase(preds.sample_ids[i], true, predicted, conf, images=frame_images(preds.sample_frames.get(preds.sample_ids[i], [])))
        for conf, i, true, predicted in predictor.task.ranked_errors(preds.outputs, preds.targets, limit)
    ]


def attention_cases(predictor: Predictor, preds, limit: int = 6) -> list[AttentionCase]:
    """Which images an attention head attended to, for the first samples."""
    return [
        AttentionCase(sample_id, frame_images(preds.sample_frames.get(sample_id, [])), weights)
        for sample_id, weights in list(preds.attention.items())[:limit]
        if len(weights) == len(preds.sample_frames.get(sample_id, []))
    ]


def frame_images(frames: list[str]) -> list:
    """Thumbnails' sources: image paths as they are; video frames (``path@T.TTTs``, a time in the whole
    video) decoded here, each video probed and read once for all its frames."""
    out: list = [Path(frame) for frame in frames]  # a video frame that cannot be read stays a path
    wanted: dict[str, list[tuple[int, float]]] = {}  # video path -> (position in out, time in seconds)
    for position, frame in enumerate(frames):
        path, _, when = frame.rpartition("@")
        try:
            time_s = float(when.removesuffix("s")) if path and when.endswith("s") else None
        except ValueError:
            time_s = None
        if time_s is not None:
            wanted.setdefault(path, []).append((position, time_s))
    if wanted:
        from seqvision.data.video import probe_video, read_frames

    for path, items in wanted.items():
        try:
            images, _ = read_frames(path, [time_s for _, time_s in items], probe_video(path).fps)
        except DataError:
            continue  # shown as unreadable in the report
        for (position, _), image in zip(items, images):
            out[position] = image.permute(1, 2, 0).numpy()
    return out


def evaluate(
    checkpoint: str | Path, data: str | Path, out_dir: str | Path | None = None, *, batch_size: int = 8,
    num_workers: int = 0, on_bad_image: str | None = None, split: str | None = None,
    device: str | torch.device = "cpu", precision: str = "auto", per_group: bool = False, group_by: str | None = None,
    diagnostics: str = "auto", chunk_size: int | None = None, runtime: str = "auto",
) -> EvaluationResult:
    """Evaluate ``checkpoint`` on a data root or manifest (optionally one of its splits). ``precision``:
    the CNN's (``auto``: bf16 where the hardware is fast at it; ``32``: as trained in fp32); ``runtime``:
    what runs its forward (``auto``: the fastest here, see :mod:`seqvision.features.runtimes`).
    ``per_group``: also the metrics of each group (``group_by``: a manifest column, default ``group``, or a
    regular expression on the sample names of a folder; see ``discover``)."""
    predictor = Predictor.load(checkpoint, device=device, precision=precision, runtime=runtime)
    predictor.shard = inference_group()  # under torchrun: each process its share; only rank 0 writes
    if predictor.shard[0] > 0:
        out_dir = None
    if chunk_size:
        predictor.chunk_size = chunk_size  # images per CNN pass
    targets = predictor.spec.kind.target_columns(predictor.spec)
    samples = discover(data, targets=targets, group_by=group_by)
    if split is not None:
        found = sorted({s.split for s in samples if s.split})
        samples = [s for s in samples if s.split == split]
        if not samples:
            raise DataError(
                f"--split {split}: no sample of {data} is in that split (its splits: {', '.join(found) or 'none'}; a "
                "split comes from a 'split' column or train/val/test folders); evaluate all of it without --split"
            )
    result = evaluate_samples(
        predictor, samples, None if out_dir is None else Path(out_dir), batch_size=batch_size,
        num_workers=num_workers, on_bad_image=on_bad_image, source=without_password(str(data)), per_group=per_group,
        diagnostics=diagnostics,
        store=predictor.cached_store(samples),  # a frozen run's cached features, when they cover the data
    )
    if out_dir is not None:  # what was evaluated, so `seqvision compare` finds the model's options and size
        record = {"checkpoint": str(Path(checkpoint).resolve()), "data": without_password(str(data)), "split": split}
        path = Path(out_dir) / "evaluation.json"
        atomic_write_text(path, json.dumps(record, indent=2))
        result.files.append(path)
    return result


def report(
    run_dir: str | Path, *, split: str | None = None, batch_size: int = 8, device: str | torch.device = "cpu",
    precision: str | None = None, diagnostics: str = "auto", runtime: str | None = None,
) -> EvaluationResult:
    """Rebuild ``RUN/<split>/report.html`` (and metrics) from a run folder: its best checkpoint on its
    saved test split (or validation split), with the training curves from its logs. The CNN runs in
    ``precision``, by default the one it trained in (so the metrics are the run's own), run by ``runtime``,
    by default the one whose features it trained on (:meth:`Predictor.own_runtime`)."""
    run = Path(run_dir)
    checkpoint = run / "best.ckpt" if (run / "best.ckpt").exists() else run / "last.ckpt"
    predictor = Predictor.load(checkpoint, device=device, precision=precision or "auto", runtime=runtime or "auto")
    predictor.shard = inference_group()  # under torchrun: each process its share; only rank 0 writes
    if precision is None:
        predictor.precision = predictor.cfg.cnn_precision()
    if runtime is None:
        predictor.runtime = predictor.own_runtime()
    data = predictor.cfg.data.data
    splits_file = run / "splits.json"
    if not data or not splits_file.exists():
        raise CheckpointError(f"{run} is not a complete run folder (config data path and splits.json needed)")
    assignment = read_split_file(splits_file)
    samples = discover(data, targets=predictor.cfg.data.targets, group_by=predictor.cfg.data.group_by)
    for name in ([split] if split else ["test", "val"]):
        chosen = [s for s in samples if assignment.get(s.id) == name]
        if chosen:
            return evaluate_samples(
                predictor, chosen, run / name if predictor.shard[0] == 0 else None, batch_size=batch_size,
                source=f"the {name} split of {without_password(str(data))}",
                history_csv=metrics_logs(run),
                per_group=any(s.group is not None for s in chosen), diagnostics=diagnostics,
                store=predictor.cached_store(chosen),  # as training evaluated it: from the cache, when frozen
            )
    raise CheckpointError(f"{run}: the saved split has no {split or 'test or val'} samples to report on")
