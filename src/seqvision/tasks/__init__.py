"""What the model's outputs mean: one :class:`Task` per kind of target, and everything that depends on it.

A task owns its loss, its output activation, the metrics logged while training, the metrics of an
evaluation and their headline, the values of a prediction row, how to rank the errors for the report
and how to count changed decisions for the diagnostics. Everything else asks the task, so a new kind
of target is one class here (and its reading from the data in :mod:`seqvision.data.targets`).

Outputs are ``(B, K)`` per sample, or ``(N, K)`` per image for the per-image tasks; targets are as
:meth:`seqvision.data.targets.TargetSpec.encode` makes them.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from seqvision.data.targets import TargetSpec
from seqvision.errors import ConfigError
from seqvision.tasks.metrics import best_thresholds, classification_metrics, multilabel_metrics, regression_metrics

# one ranked error for the report: (how sure or how wrong, output row, true, predicted)
RankedError = tuple[float, int, str, str]


class Task:
    """The base: a kind of target for ``spec``'s classes or targets. ``thresholds``: multi-label decision
    thresholds (one per label), kept with the task because predictions and metrics depend on them."""

    name: ClassVar[str]
    per_image: ClassVar[bool] = False  # one output per image instead of one per sample
    headline: ClassVar[tuple[str, str]]  # the evaluation's main figures, the first one first
    lower_is_better: ClassVar[bool] = False  # for the first headline figure (errors: yes)

    def __init__(self, spec: TargetSpec, thresholds: list[float] | None = None) -> None:
        self.spec = spec
        self.names = list(spec.class_names if spec.is_classes else spec.target_names)
        self.thresholds = list(thresholds) if thresholds else [0.5] * len(self.names)

    @property
    def num_outputs(self) -> int:
        return len(self.names)

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

    def class_weights(self, spec: TargetSpec, samples: list) -> torch.Tensor:
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
    headline = ("accuracy", "macro_f1")

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
    per_image = True


class Multilabel(Task):
    """Any number of classes per sample: sigmoid + BCE (positive weights), per-label thresholds chosen on
    the validation set for the best F1."""

    name = "multilabel"
    headline = ("exact_match", "micro_f1")

    def loss(self, outputs, targets, *, weights=None, label_smoothing=0.0, kind="mse"):
        return F.binary_cross_entropy_with_logits(outputs.float(), targets, pos_weight=weights)

    def validation_metrics(self):
        k = self.num_outputs
        return torchmetrics.MetricCollection({
            "map": torchmetrics.AveragePrecision(task="multilabel", num_labels=k, average="macro"),
            "f1": torchmetrics.F1Score(task="multilabel", num_labels=k, average="macro"),
        }, prefix="val_")

    def __init__(self, spec: TargetSpec, thresholds: list[float] | None = None) -> None:
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
    headline = ("mae", "rmse")
    lower_is_better = True

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
    per_image = True


TASKS: dict[str, type[Task]] = {t.name: t for t in (Classification, Multilabel, Regression, FrameClassification, FrameRegression)}


def task_of(spec: TargetSpec, thresholds: list[float] | None = None) -> Task:
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
