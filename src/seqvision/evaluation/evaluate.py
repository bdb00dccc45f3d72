"""Evaluate a checkpoint on labelled data: metrics, ``metrics.json`` and the confusion-matrix plot."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from seqvision.data.discovery import discover
from seqvision.data.samples import Sample
from seqvision.data.targets import TargetSpec
from seqvision.errors import CheckpointError, DataError
from seqvision.evaluation.metrics import classification_metrics, multilabel_metrics, regression_metrics
from seqvision.evaluation.report import plot_confusion_matrix, write_metrics
from seqvision.inference.predictor import Predictor


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
        found = TargetSpec.infer(samples).task
    except DataError:
        raise problem from None
    if found == spec.task:
        raise problem
    family = {"classification": "class labels", "multilabel": "multi-label 'labels'", "regression": "numeric targets",
              "frame_classification": "per-image labels", "frame_regression": "per-image targets"}
    raise CheckpointError(
        f"the checkpoint is a {spec.task} model ({', '.join(spec.class_names or spec.target_names)}) but {source} "
        f"holds {family[found]} ({problem}); evaluate it on data of its own task"
    )


def evaluate_samples(
    predictor: Predictor, samples: list[Sample], out_dir: Path | None = None, *, batch_size: int = 8,
    num_workers: int = 0, on_bad_image: str | None = None, source: str = "the data",
) -> EvaluationResult:
    """Metrics of ``predictor`` on ``samples``; writes ``metrics.json`` (+ plot) when ``out_dir`` is given."""
    check_task_matches(predictor, samples, source)
    preds = predictor.run(samples, batch_size=batch_size, num_workers=num_workers, on_bad_image=on_bad_image, with_targets=True)
    spec = predictor.spec
    if spec.task in ("classification", "frame_classification"):
        metrics = classification_metrics(preds.outputs, preds.targets, spec.class_names)
    elif spec.task == "multilabel":
        metrics = multilabel_metrics(preds.outputs, preds.targets, spec.class_names, predictor.thresholds)
    else:
        metrics = regression_metrics(preds.outputs, preds.targets, spec.target_names)
    if spec.per_image:  # metrics over images; samples counted apart
        metrics["num_images"], metrics["num_samples"] = metrics["num_samples"], len(set(preds.sample_ids))
    if preds.skipped:
        metrics["skipped"] = preds.skipped
    result = EvaluationResult(metrics, skipped=preds.skipped)
    if out_dir is not None:
        out_dir = Path(out_dir)
        result.files.append(write_metrics(metrics, out_dir))
        if "confusion_matrix" in metrics:
            cm = metrics["confusion_matrix"]
            result.files.append(plot_confusion_matrix(cm["matrix"], cm["labels"], out_dir / "confusion_matrix.png"))
    return result


def evaluate(
    checkpoint: str | Path, data: str | Path, out_dir: str | Path | None = None, *, batch_size: int = 8,
    num_workers: int = 0, on_bad_image: str | None = None, split: str | None = None,
) -> EvaluationResult:
    """Evaluate ``checkpoint`` on a data root or manifest (optionally one of its splits)."""
    predictor = Predictor.load(checkpoint)
    samples = discover(data, targets=predictor.spec.target_names if predictor.spec.task == "regression" and predictor.spec.target_names != ["label"] else None)
    if split is not None:
        samples = [s for s in samples if s.split == split]
    return evaluate_samples(
        predictor, samples, None if out_dir is None else Path(out_dir), batch_size=batch_size,
        num_workers=num_workers, on_bad_image=on_bad_image, source=str(data),
    )
