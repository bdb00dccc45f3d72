"""Evaluate a checkpoint on labelled data: metrics, ``metrics.json`` and the confusion-matrix plot."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from seqvision.data.discovery import discover
from seqvision.data.samples import Sample
from seqvision.data.targets import TargetSpec
from seqvision.errors import CheckpointError
from seqvision.evaluation.metrics import classification_metrics, regression_metrics
from seqvision.evaluation.report import plot_confusion_matrix, write_metrics
from seqvision.inference.predictor import Predictor


@dataclass
class EvaluationResult:
    metrics: dict
    files: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def check_task_matches(predictor: Predictor, samples: list[Sample], source: str) -> None:
    """A classification checkpoint on regression data (or the reverse) is an error that says so."""
    spec = predictor.spec
    has_numbers = any(s.targets is not None for s in samples)
    if spec.task == "classification" and has_numbers and all(s.label is None for s in samples):
        raise CheckpointError(f"the checkpoint is a classifier ({', '.join(spec.class_names)}) but {source} holds regression targets")
    if spec.task == "regression" and not has_numbers:
        try:
            TargetSpec.infer(samples, task="regression")
        except Exception:
            raise CheckpointError(
                f"the checkpoint is a regression model ({', '.join(spec.target_names)}) but {source} holds class labels"
            ) from None


def evaluate_samples(
    predictor: Predictor, samples: list[Sample], out_dir: Path | None = None, *, batch_size: int = 8,
    num_workers: int = 0, on_bad_image: str | None = None, source: str = "the data",
) -> EvaluationResult:
    """Metrics of ``predictor`` on ``samples``; writes ``metrics.json`` (+ plot) when ``out_dir`` is given."""
    check_task_matches(predictor, samples, source)
    preds = predictor.run(samples, batch_size=batch_size, num_workers=num_workers, on_bad_image=on_bad_image, with_targets=True)
    spec = predictor.spec
    if spec.task == "classification":
        metrics = classification_metrics(preds.outputs, preds.targets, spec.class_names)
    else:
        metrics = regression_metrics(preds.outputs, preds.targets, spec.target_names)
    if preds.skipped:
        metrics["skipped"] = preds.skipped
    result = EvaluationResult(metrics, skipped=preds.skipped)
    if out_dir is not None:
        out_dir = Path(out_dir)
        result.files.append(write_metrics(metrics, out_dir))
        if spec.task == "classification":
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
