"""One :class:`Task` per kind of target, and everything that depends on the kind.

A task kind reads its targets from the samples (whether the data holds them, the class or target names,
each sample's target tensor, class counts and sampler weights) and owns its loss, its output
activation, the metrics logged while training, the metrics of an evaluation and their headline, the
values of a prediction row, how to rank the errors for the report and how to count changed decisions
for the diagnostics. Everything else asks the task, so a new kind of target is one class here.

Outputs are ``(B, K)`` per sample, or ``(N, K)`` per image for the per-image tasks; targets are as
:meth:`seqvision.tasks.spec.TargetSpec.encode` makes them.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from seqvision.data.samples import Sample
from seqvision.errors import ConfigError, DataError
from seqvision.tasks.metrics import best_thresholds, classification_metrics, multilabel_metrics, regression_metrics

if TYPE_CHECKING:
    from seqvision.tasks.spec import TargetSpec

# one ranked error for the report: (how sure or how wrong, output row, true, predicted)
RankedError = tuple[float, int, str, str]


class Task:
    """The base: a kind of target for ``spec``'s classes or targets. ``thresholds``: multi-label decision
    thresholds (one per label), kept with the task because predictions and metrics depend on them."""

    name: ClassVar[str]
    targets_are: ClassVar[str]  # what a sample's targets are, in words (for errors)
    per_image: ClassVar[bool] = False  # one output per image instead of one per sample
    is_classes: ClassVar[bool] = False  # outputs are classes (class_names), not values (target_names)
    stratified: ClassVar[bool] = False  # the automatic split keeps each class's share in every split
    headline: ClassVar[tuple[str, str]]  # the evaluation's main figures, the first one first
    lower_is_better: ClassVar[bool] = False  # for the first headline figure (errors: yes)

    def __init__(self, spec: "TargetSpec", thresholds: list[float] | None = None) -> None:
        self.spec = spec
        self.names = list(spec.class_names if spec.is_classes else spec.target_names)
        self.thresholds = list(thresholds) if thresholds else [0.5] * len(self.names)

    @property
    def num_outputs(self) -> int:
        return len(self.names)

    # ---------------------------------------------------------------------- targets from the data
    @classmethod
    def found_in(cls, samples: list[Sample]) -> bool:
        """Whether the samples hold this kind's targets (``--task auto`` takes the first kind that finds
        its own, in :data:`AUTO_ORDER`)."""
        raise NotImplementedError

    @classmethod
    def names_from(cls, samples: list[Sample], target_names: list[str] | None) -> list[str]:
        """The class names (or target names) of the data; a clear error when a sample lacks its target."""
        raise NotImplementedError

    @classmethod
    def encode(cls, spec: "TargetSpec", sample: Sample, frame_indices: list[int] | None) -> torch.Tensor:
        """A sample's target tensor (see :meth:`TargetSpec.encode`)."""
        raise NotImplementedError

    @classmethod
    def target_columns(cls, spec: "TargetSpec") -> list[str] | None:
        """The manifest columns this kind reads its targets from, when they must be named (``--targets``)."""
        return None

    @classmethod
    def class_counts(cls, spec: "TargetSpec", samples: list[Sample]) -> torch.Tensor:
        raise DataError(f"a {cls.name} task has no classes to count")

    @classmethod
    def sample_weights(cls, spec: "TargetSpec", samples: list[Sample]) -> torch.Tensor:
        raise DataError("--balanced-sampler needs a classification or multi-label task")

    # ------------------------------------------------------------------------------------ training
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, *, weights: torch.Tensor | None = None,
             label_smoothing: float = 0.0, kind: str = "mse") -> torch.Tensor:
        raise NotImplementedError

    def validation_metrics(self) -> torchmetrics.MetricCollection:
        """What is logged each validation epoch (``val_*``, so it can be monitored)."""
        raise NotImplementedError

    def validation_update(self, metrics: torchmetrics.MetricCollection, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Feed one validation batch to :meth:`validation_metrics` (and to whatever the task learns from it)."""
        metrics.update(outputs.float(), targets)

    def validation_epoch_end(self) -> None:
        """After each validation epoch: what the task learns from validation is settled here."""

    def logged_metrics(self) -> list[str]:
        """Every metric a training run of this task logs: the losses and the validation metrics."""
        return ["train_loss", "val_loss", *self.validation_metrics().keys()]

    def options_without_effect(self, *, label_smoothing: float, loss: str) -> list[str]:
        """Loss options meant for another kind of task, to be said once rather than silently ignored."""
        return []

    def class_weights(self, spec: "TargetSpec", samples: list) -> torch.Tensor:
        """``--class-weights balanced`` from the training samples."""
        raise ConfigError(f"--class-weights balanced needs a classification task, not {self.name}")

    # ---------------------------------------------------------------------------------- evaluation
    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict:
        raise NotImplementedError

    def values(self, outputs: torch.Tensor) -> torch.Tensor:
        """The outputs as the user reads them: probabilities for classes, the numbers for regression."""
        return outputs.float()

    def prediction(self, values: torch.Tensor) -> str | float | list[float]:
        """A prediction row's ``prediction`` from one row of :meth:`values`."""
        out = [round(float(x), 6) for x in values]
        return out[0] if len(out) == 1 else out

    def ranked_errors(self, outputs: torch.Tensor, targets: torch.Tensor, limit: int) -> list[RankedError]:
        """The worst predictions first (the most confident wrong ones, or the largest errors)."""
        raise NotImplementedError

    def changed(self, before: torch.Tensor, after: torch.Tensor) -> tuple[str, float]:
        """How much a variant of the inputs moved the predictions (the diagnostics)."""
        return "mean_abs_change", float((before - after).abs().mean())


class Classification(Task):
    """One class per sample: cross-entropy (label smoothing, class weights), softmax probabilities."""

    name = "classification"
    targets_are = "class labels"  # what the data holds, in words
    headline = ("accuracy", "macro_f1")
    is_classes = True
    stratified = True

    @classmethod
    def found_in(cls, samples):
        return True  # the last kind asked: class labels

    @classmethod
    def names_from(cls, samples, target_names):
        unlabelled = [s for s in samples if s.label is None]
        if unlabelled:
            raise DataError(f"sample {unlabelled[0].id!r} ({unlabelled[0].source}) has no label")
        return _at_least_two(sorted({s.label for s in samples}), "labels")

    @classmethod
    def encode(cls, spec, sample, frame_indices):
        if sample.label is None:
            raise DataError(f"sample {sample.id!r} ({sample.source}) has no label")
        return torch.tensor(_class_index(spec, sample.label, sample), dtype=torch.long)

    @classmethod
    def class_counts(cls, spec, samples):
        return _counts(spec, Counter(s.label for s in samples))

    @classmethod
    def sample_weights(cls, spec, samples):
        inverse = _inverse_counts(spec, samples)
        return torch.tensor([inverse[s.label] for s in samples])

    def loss(self, outputs, targets, *, weights=None, label_smoothing=0.0, kind="mse"):
        return F.cross_entropy(outputs.float(), targets, weight=weights, label_smoothing=label_smoothing)

    def validation_metrics(self):
        k = self.num_outputs
        return torchmetrics.MetricCollection({
            "acc": torchmetrics.Accuracy(task="multiclass", num_classes=k),
            "f1": torchmetrics.F1Score(task="multiclass", num_classes=k, average="macro"),
        }, prefix="val_")

    def validation_update(self, metrics, outputs, targets):
        metrics.update(outputs.argmax(dim=-1), targets)

    def options_without_effect(self, *, label_smoothing, loss):
        return [f"--loss {loss} has no effect on a {self.name} task (it is for regression)"] if loss != "mse" else []

    def class_weights(self, spec, samples):
        counts = spec.class_counts(samples)
        return counts.sum() / (len(counts) * counts.clamp_min(1))  # N / (C * n_c)

    def metrics(self, outputs, targets):
        return classification_metrics(outputs, targets, self.names)

    def values(self, outputs):
        return outputs.float().softmax(dim=-1)

    def prediction(self, values):
        return self.names[int(values.argmax())]

    def ranked_errors(self, outputs, targets, limit):
        conf, pred = outputs.softmax(-1).max(-1)
        wrong = torch.nonzero(pred != targets).flatten().tolist()
        cases = [(float(conf[i]), i, self.names[int(targets[i])], self.names[int(pred[i])]) for i in wrong]
        return sorted(cases, key=lambda c: -c[0])[:limit]

    def changed(self, before, after):
        return "changed", float((before.argmax(-1) != after.argmax(-1)).float().mean())


class FrameClassification(Classification):
    """One class per image (sequence labelling)."""

    name = "frame_classification"
    targets_are = "per-image labels"  # what the data holds, in words
    per_image = True
    stratified = False

    @classmethod
    def found_in(cls, samples):
        return any(s.frame_labels for s in samples)

    @classmethod
    def names_from(cls, samples, target_names):
        for s in samples:
            if s.frame_labels is None or any(label is None for label in s.frame_labels):
                raise DataError(f"sample {s.id!r} ({s.source}) lacks a 'frame_label' for some image; give one per image")
        return _at_least_two(sorted({x for s in samples for x in s.frame_labels}), "frame labels")

    @classmethod
    def encode(cls, spec, sample, frame_indices):
        labels = sample.frame_labels or []
        indices = _frame_indices(sample, frame_indices, labels, "a 'frame_label'")
        return torch.tensor([_class_index(spec, labels[i], sample) for i in indices], dtype=torch.long)

    @classmethod
    def class_counts(cls, spec, samples):
        return _counts(spec, Counter(x for s in samples for x in (s.frame_labels or [])))

    @classmethod
    def sample_weights(cls, spec, samples):
        raise DataError("--balanced-sampler needs a classification or multi-label task")


class Multilabel(Task):
    """Any number of classes per sample: sigmoid + BCE (positive weights), per-label thresholds chosen on
    the validation set for the best F1."""

    name = "multilabel"
    targets_are = "multi-label 'labels'"  # what the data holds, in words
    headline = ("exact_match", "micro_f1")
    is_classes = True

    @classmethod
    def found_in(cls, samples):
        return any(s.labels is not None for s in samples)

    @classmethod
    def names_from(cls, samples, target_names):
        unlabelled = [s for s in samples if s.labels is None]
        if unlabelled:
            raise DataError(f"sample {unlabelled[0].id!r} ({unlabelled[0].source}) has no 'labels' value (';'-separated)")
        names = sorted({x for s in samples for x in s.labels})
        if not names:
            raise DataError("the 'labels' column names no class at all; multi-label needs at least one")
        return names

    @classmethod
    def encode(cls, spec, sample, frame_indices):
        if sample.labels is None:
            raise DataError(f"sample {sample.id!r} ({sample.source}) has no 'labels' value")
        hot = torch.zeros(len(spec.class_names))
        for name in sample.labels:
            hot[_class_index(spec, name, sample)] = 1.0
        return hot

    @classmethod
    def class_counts(cls, spec, samples):
        return _counts(spec, Counter(x for s in samples for x in (s.labels or [])))

    @classmethod
    def sample_weights(cls, spec, samples):
        """A sample takes its rarest class; one with no class on, the mean weight."""
        inverse = _inverse_counts(spec, samples)
        mean = sum(inverse.values()) / len(inverse)
        return torch.tensor([max((inverse[x] for x in s.labels or []), default=mean) for s in samples])

    def loss(self, outputs, targets, *, weights=None, label_smoothing=0.0, kind="mse"):
        return F.binary_cross_entropy_with_logits(outputs.float(), targets, pos_weight=weights)

    def validation_metrics(self):
        k = self.num_outputs
        return torchmetrics.MetricCollection({
            "map": torchmetrics.AveragePrecision(task="multilabel", num_labels=k, average="macro"),
            "f1": torchmetrics.F1Score(task="multilabel", num_labels=k, average="macro"),
        }, prefix="val_")

    def __init__(self, spec: "TargetSpec", thresholds: list[float] | None = None) -> None:
        super().__init__(spec, thresholds)
        self._probs: list[torch.Tensor] = []  # this validation epoch's, to choose the thresholds
        self._targets: list[torch.Tensor] = []

    def validation_update(self, metrics, outputs, targets):
        probs = outputs.detach().float().sigmoid()
        metrics.update(probs, targets.long())
        self._probs.append(probs.cpu())
        self._targets.append(targets.detach().cpu())

    def validation_epoch_end(self) -> None:
        """Per label, the threshold with the best F1 on this epoch's validation probabilities."""
        if self._probs:
            self.thresholds = best_thresholds(torch.cat(self._probs), torch.cat(self._targets))
        self._probs.clear()
        self._targets.clear()

    def options_without_effect(self, *, label_smoothing, loss):
        said = [f"--label-smoothing has no effect on a {self.name} task (it is for single-label classes)"] if label_smoothing else []
        return said + ([f"--loss {loss} has no effect on a {self.name} task (it is for regression)"] if loss != "mse" else [])

    def class_weights(self, spec, samples):
        positives = spec.class_counts(samples)  # per label: neg / pos, what BCE's pos_weight means
        return (len(samples) - positives).clamp_min(0) / positives.clamp_min(1)

    def metrics(self, outputs, targets):
        return multilabel_metrics(outputs, targets, self.names, self.thresholds)

    def values(self, outputs):
        return outputs.float().sigmoid()

    def on(self, outputs: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` bool: each label's decision at its threshold."""
        return outputs.float().sigmoid() >= torch.tensor(self.thresholds)[None, :]

    def prediction(self, values):
        return ";".join(n for n, v, t in zip(self.names, values, self.thresholds) if float(v) >= t)

    def ranked_errors(self, outputs, targets, limit):
        probs, on, truth = outputs.sigmoid(), self.on(outputs), targets > 0.5

        def names(row: torch.Tensor) -> str:
            return ";".join(n for n, v in zip(self.names, row) if v) or "(none)"

        wrong = torch.nonzero((on != truth).any(-1)).flatten().tolist()
        cases = [(float((probs[i] - 0.5).abs().mean() * 2), i, names(truth[i]), names(on[i])) for i in wrong]
        return sorted(cases, key=lambda c: -c[0])[:limit]

    def changed(self, before, after):
        return "changed", float((self.on(before) != self.on(after)).any(-1).float().mean())


class Regression(Task):
    """Numbers per sample: MSE or L1 over every target."""

    name = "regression"
    targets_are = "numeric targets"  # what the data holds, in words
    headline = ("mae", "rmse")
    lower_is_better = True

    @classmethod
    def found_in(cls, samples):
        if any(s.targets is not None for s in samples):
            return True
        labels = [s.label for s in samples if s.label is not None]
        return bool(labels) and _all_fractional_numbers(labels)  # '0.5' is a value; '1', '2' may be classes

    @classmethod
    def names_from(cls, samples, target_names):
        if any(s.targets is not None for s in samples):
            names = list(target_names) if target_names else list(next(s.targets for s in samples if s.targets))
            missing = [s for s in samples if s.targets is None]
            if missing:
                raise DataError(f"sample {missing[0].id!r} ({missing[0].source}) has no regression targets")
            return names
        bad = [s for s in samples if s.label is None or _to_float(s.label) is None]
        if bad:
            raise DataError(
                f"sample {bad[0].id!r} ({bad[0].source}): label {bad[0].label!r} is not a number; "
                "regression needs numeric labels or target columns (--targets COL,...)"
            )
        return ["label"]

    @classmethod
    def encode(cls, spec, sample, frame_indices):
        if sample.targets is not None:
            return torch.tensor(_values(spec, sample.targets, sample), dtype=torch.float32)
        if sample.label is not None and _to_float(sample.label) is not None and spec.target_names == ["label"]:
            return torch.tensor([_to_float(sample.label)], dtype=torch.float32)
        raise DataError(f"sample {sample.id!r} ({sample.source}) has no numeric target")

    @classmethod
    def target_columns(cls, spec):
        return spec.target_names if spec.target_names != ["label"] else None  # 'label': numbers in the label column

    def loss(self, outputs, targets, *, weights=None, label_smoothing=0.0, kind="mse"):
        outputs = outputs.float()
        return F.l1_loss(outputs, targets) if kind == "l1" else F.mse_loss(outputs, targets)

    def validation_metrics(self):
        return torchmetrics.MetricCollection(
            {"mae": torchmetrics.MeanAbsoluteError(), "rmse": torchmetrics.MeanSquaredError(squared=False)}, prefix="val_"
        )

    def options_without_effect(self, *, label_smoothing, loss):
        return [f"--label-smoothing has no effect on a {self.name} task (it is for single-label classes)"] if label_smoothing else []

    def metrics(self, outputs, targets):
        return regression_metrics(outputs, targets, self.names)

    def ranked_errors(self, outputs, targets, limit):
        err = (outputs - targets).abs().mean(-1)
        order = err.argsort(descending=True)[:limit].tolist()
        return [(float(err[i]), i, f"{targets[i].tolist()}", f"{[round(v, 3) for v in outputs[i].tolist()]}") for i in order]


class FrameRegression(Regression):
    """Numbers per image."""

    name = "frame_regression"
    targets_are = "per-image targets"  # what the data holds, in words
    per_image = True

    @classmethod
    def found_in(cls, samples):
        return any(s.frame_targets for s in samples)

    @classmethod
    def target_columns(cls, spec):
        return None  # per-image values come from the frame_target columns

    @classmethod
    def names_from(cls, samples, target_names):
        first = next((t for s in samples for t in (s.frame_targets or []) if t), None)
        if first is None:
            raise DataError("--task frame_regression needs 'frame_target*' columns in the manifest")
        return list(target_names) if target_names else sorted(first)

    @classmethod
    def encode(cls, spec, sample, frame_indices):
        targets = sample.frame_targets or []
        indices = _frame_indices(sample, frame_indices, targets, "'frame_target' values")
        return torch.tensor([_values(spec, targets[i], sample) for i in indices], dtype=torch.float32)


TASKS: dict[str, type[Task]] = {t.name: t for t in (Classification, Multilabel, Regression, FrameClassification, FrameRegression)}
# --task auto: the first kind whose targets the samples hold (per-image columns, a 'labels' column,
# numbers, class labels)
AUTO_ORDER: tuple[type[Task], ...] = (FrameClassification, FrameRegression, Multilabel, Regression, Classification)


def task_of(spec: "TargetSpec", thresholds: list[float] | None = None) -> Task:
    """The :class:`Task` of ``spec.task``."""
    return TASKS[spec.task](spec, thresholds)


class TaskLoss(nn.Module):
    """The task's loss as a module: class weights (or multi-label positive weights) move with it."""

    def __init__(self, task: Task, *, label_smoothing: float = 0.0, class_weights: torch.Tensor | None = None, loss: str = "mse") -> None:
        super().__init__()
        self.task = task
        self.label_smoothing = label_smoothing
        self.kind = loss
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``outputs (B or N, K)`` against class indices, multi-hot ``(B, K)`` or values ``(B or N, K)``."""
        return self.task.loss(outputs, targets, weights=self.class_weights, label_smoothing=self.label_smoothing, kind=self.kind)


# ------------------------------------------------------------------------------ reading targets


def _class_index(spec: "TargetSpec", name: str, sample: Sample) -> int:
    try:
        return spec.class_names.index(name)
    except ValueError:
        raise DataError(
            f"sample {sample.id!r} ({sample.source}) has label {name!r}, which the model does not know "
            f"(its classes: {', '.join(spec.class_names)}); remove the sample or retrain"
        ) from None


def _values(spec: "TargetSpec", targets: dict[str, float], sample: Sample) -> list[float]:
    absent = [n for n in spec.target_names if n not in targets]
    if absent:
        raise DataError(f"sample {sample.id!r} ({sample.source}) lacks target column(s) {absent}")
    return [targets[n] for n in spec.target_names]


def _frame_indices(sample: Sample, frame_indices: list[int] | None, per_frame: list, what: str) -> range | list[int]:
    """The images whose per-image targets are wanted (all when None), each of which must have one."""
    if sample.video is not None:
        raise DataError(f"sample {sample.id!r}: per-image targets need image files, not a video")
    indices = range(len(sample.frames)) if frame_indices is None else frame_indices
    if len(per_frame) != len(sample.frames) or any(per_frame[i] is None for i in indices):
        raise DataError(f"sample {sample.id!r} ({sample.source}) lacks {what} for some image")
    return indices


def _counts(spec: "TargetSpec", counts: Counter) -> torch.Tensor:
    return torch.tensor([counts.get(c, 0) for c in spec.class_names], dtype=torch.float32)


def _inverse_counts(spec: "TargetSpec", samples: list[Sample]) -> dict[str, float]:
    counts = spec.class_counts(samples).clamp_min(1)
    return {name: 1.0 / float(c) for name, c in zip(spec.class_names, counts)}


def _at_least_two(classes: list[str], what: str) -> list[str]:
    if len(classes) < 2:
        raise DataError(
            f"the {what} hold only one class ({classes[0] if classes else None!r}); classification needs at least "
            "two (for numeric targets use --task regression)"
        )
    return classes


def _to_float(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _all_fractional_numbers(labels: list[str]) -> bool:
    """True when every label is a number and at least one is not an integer ('0.5', not '1', '2')."""
    values = [_to_float(x) for x in labels]
    return all(v is not None for v in values) and any(v != int(v) for v in values)  # type: ignore[arg-type]
