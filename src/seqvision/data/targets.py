"""What is learnt, and how a sample's targets become tensors.

Tasks: ``classification`` (one class per sample), ``multilabel`` (any number of classes per sample),
``regression`` (numbers per sample), and the per-image forms ``frame_classification`` (one class per
image: sequence labelling) and ``frame_regression`` (numbers per image).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import torch

from seqvision.data.samples import Sample
from seqvision.errors import DataError

TASKS = ("classification", "multilabel", "regression", "frame_classification", "frame_regression")


@dataclass
class TargetSpec:
    task: str
    class_names: list[str] = field(default_factory=list)
    target_names: list[str] = field(default_factory=list)

    @property
    def num_outputs(self) -> int:
        return len(self.class_names) if self.is_classes else len(self.target_names)

    @property
    def is_classes(self) -> bool:
        return self.task in ("classification", "multilabel", "frame_classification")

    @property
    def per_image(self) -> bool:
        """One output per image (sequence labelling) instead of one per sample."""
        return self.task.startswith("frame_")

    def to_dict(self) -> dict:
        return {"task": self.task, "class_names": list(self.class_names), "target_names": list(self.target_names)}

    @classmethod
    def from_dict(cls, raw: dict) -> "TargetSpec":
        return cls(raw["task"], list(raw.get("class_names", [])), list(raw.get("target_names", [])))

    # ------------------------------------------------------------------------------------- inference
    @classmethod
    def infer(cls, samples: list[Sample], *, task: str = "auto", target_names: list[str] | None = None) -> "TargetSpec":
        """Read the task from the data (per-image columns, a 'labels' column, numbers, class labels)."""
        if task == "auto":
            task = _auto_task(samples)
        if task == "frame_classification":
            for s in samples:
                if s.frame_labels is None or any(label is None for label in s.frame_labels):
                    raise DataError(f"sample {s.id!r} ({s.source}) lacks a 'frame_label' for some image; give one per image")
            return cls(task, class_names=_at_least_two(sorted({x for s in samples for x in s.frame_labels}), "frame labels"))
        if task == "frame_regression":
            first = next((t for s in samples for t in (s.frame_targets or []) if t), None)
            if first is None:
                raise DataError("--task frame_regression needs 'frame_target*' columns in the manifest")
            return cls(task, target_names=list(target_names) if target_names else sorted(first))
        if task == "multilabel":
            unlabelled = [s for s in samples if s.labels is None]
            if unlabelled:
                raise DataError(f"sample {unlabelled[0].id!r} ({unlabelled[0].source}) has no 'labels' value (';'-separated)")
            names = sorted({x for s in samples for x in s.labels})
            if not names:
                raise DataError("the 'labels' column names no class at all; multi-label needs at least one")
            return cls(task, class_names=names)
        if task == "regression":
            if any(s.targets is not None for s in samples):
                names = list(target_names) if target_names else list(next(s.targets for s in samples if s.targets))
                missing = [s for s in samples if s.targets is None]
                if missing:
                    raise DataError(f"sample {missing[0].id!r} ({missing[0].source}) has no regression targets")
                return cls(task, target_names=names)
            bad = [s for s in samples if s.label is None or _to_float(s.label) is None]
            if bad:
                raise DataError(
                    f"sample {bad[0].id!r} ({bad[0].source}): label {bad[0].label!r} is not a number; "
                    "regression needs numeric labels or target columns (--targets COL,...)"
                )
            return cls(task, target_names=["label"])
        unlabelled = [s for s in samples if s.label is None]
        if unlabelled:
            raise DataError(f"sample {unlabelled[0].id!r} ({unlabelled[0].source}) has no label")
        return cls("classification", class_names=_at_least_two(sorted({s.label for s in samples}), "labels"))

    # -------------------------------------------------------------------------------------- encoding
    def check(self, samples: list[Sample]) -> None:
        """Raise for the first sample whose target this spec cannot encode (e.g. an unknown label)."""
        for sample in samples:
            self.encode(sample)

    def encode(self, sample: Sample, frame_indices: list[int] | None = None) -> torch.Tensor:
        """A sample's target: ``()`` class index, ``(K,)`` multi-hot or values; per-image tasks give
        ``(T,)`` classes or ``(T, K)`` values for the images at ``frame_indices`` (all when None)."""
        if self.per_image:
            return self._encode_frames(sample, frame_indices)
        if self.task == "classification":
            if sample.label is None:
                raise DataError(f"sample {sample.id!r} ({sample.source}) has no label")
            return torch.tensor(self._class_index(sample.label, sample), dtype=torch.long)
        if self.task == "multilabel":
            if sample.labels is None:
                raise DataError(f"sample {sample.id!r} ({sample.source}) has no 'labels' value")
            hot = torch.zeros(len(self.class_names))
            for name in sample.labels:
                hot[self._class_index(name, sample)] = 1.0
            return hot
        if sample.targets is not None:
            return torch.tensor(self._values(sample.targets, sample), dtype=torch.float32)
        if sample.label is not None and _to_float(sample.label) is not None and self.target_names == ["label"]:
            return torch.tensor([_to_float(sample.label)], dtype=torch.float32)
        raise DataError(f"sample {sample.id!r} ({sample.source}) has no numeric target")

    def _encode_frames(self, sample: Sample, frame_indices: list[int] | None) -> torch.Tensor:
        if sample.video is not None:
            raise DataError(f"sample {sample.id!r}: per-image targets need image files, not a video")
        indices = range(len(sample.frames)) if frame_indices is None else frame_indices
        if self.task == "frame_classification":
            labels = sample.frame_labels or []
            if len(labels) != len(sample.frames) or any(labels[i] is None for i in indices):
                raise DataError(f"sample {sample.id!r} ({sample.source}) lacks a 'frame_label' for some image")
            return torch.tensor([self._class_index(labels[i], sample) for i in indices], dtype=torch.long)
        targets = sample.frame_targets or []
        if len(targets) != len(sample.frames) or any(targets[i] is None for i in indices):
            raise DataError(f"sample {sample.id!r} ({sample.source}) lacks 'frame_target' values for some image")
        return torch.tensor([self._values(targets[i], sample) for i in indices], dtype=torch.float32)

    def _class_index(self, name: str, sample: Sample) -> int:
        try:
            return self.class_names.index(name)
        except ValueError:
            raise DataError(
                f"sample {sample.id!r} ({sample.source}) has label {name!r}, which the model does not know "
                f"(its classes: {', '.join(self.class_names)}); remove the sample or retrain"
            ) from None

    def _values(self, targets: dict[str, float], sample: Sample) -> list[float]:
        absent = [n for n in self.target_names if n not in targets]
        if absent:
            raise DataError(f"sample {sample.id!r} ({sample.source}) lacks target column(s) {absent}")
        return [targets[n] for n in self.target_names]

    def class_counts(self, samples: list[Sample]) -> torch.Tensor:
        """Training examples per class: samples (classification), positives (multi-label), images (per-image)."""
        if self.task == "multilabel":
            counts = Counter(x for s in samples for x in (s.labels or []))
        elif self.task == "frame_classification":
            counts = Counter(x for s in samples for x in (s.frame_labels or []))
        else:
            counts = Counter(s.label for s in samples)
        return torch.tensor([counts.get(c, 0) for c in self.class_names], dtype=torch.float32)

    def sample_weights(self, samples: list[Sample]) -> torch.Tensor:
        """Per-sample weights for a class-balanced sampler: 1 / (training samples of its class);
        multi-label samples take their rarest class (a sample with no class on: the mean weight)."""
        if self.task not in ("classification", "multilabel"):
            raise DataError("--balanced-sampler needs a classification or multi-label task")
        counts = self.class_counts(samples).clamp_min(1)
        inverse = {name: 1.0 / float(c) for name, c in zip(self.class_names, counts)}
        mean = sum(inverse.values()) / len(inverse)
        if self.task == "classification":
            return torch.tensor([inverse[s.label] for s in samples])
        return torch.tensor([max((inverse[x] for x in s.labels or []), default=mean) for s in samples])


def _auto_task(samples: list[Sample]) -> str:
    if any(s.frame_labels for s in samples):
        return "frame_classification"
    if any(s.frame_targets for s in samples):
        return "frame_regression"
    if any(s.labels is not None for s in samples):
        return "multilabel"
    if any(s.targets is not None for s in samples):
        return "regression"
    labels = [s.label for s in samples if s.label is not None]
    return "regression" if labels and _all_fractional_numbers(labels) else "classification"


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
