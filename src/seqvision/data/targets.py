"""What is learnt: class names (classification) or target names (regression), and how samples map to tensors."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import torch

from seqvision.data.samples import Sample
from seqvision.errors import DataError


@dataclass
class TargetSpec:
    task: str  # classification | regression
    class_names: list[str] = field(default_factory=list)
    target_names: list[str] = field(default_factory=list)

    @property
    def num_outputs(self) -> int:
        return len(self.class_names) if self.task == "classification" else len(self.target_names)

    def to_dict(self) -> dict:
        return {"task": self.task, "class_names": list(self.class_names), "target_names": list(self.target_names)}

    @classmethod
    def from_dict(cls, raw: dict) -> "TargetSpec":
        return cls(raw["task"], list(raw.get("class_names", [])), list(raw.get("target_names", [])))

    @classmethod
    def infer(cls, samples: list[Sample], *, task: str = "auto", target_names: list[str] | None = None) -> "TargetSpec":
        """Read the task from the data: numeric targets -> regression, class labels -> classification."""
        has_targets = any(s.targets is not None for s in samples)
        labels = [s.label for s in samples if s.label is not None]
        if task == "auto":
            task = "regression" if has_targets or (labels and _all_fractional_numbers(labels)) else "classification"
        if task == "regression":
            if has_targets:
                names = list(target_names) if target_names else list(next(s.targets for s in samples if s.targets))
                missing = [s for s in samples if s.targets is None]
                if missing:
                    raise DataError(f"sample {missing[0].id!r} ({missing[0].source}) has no regression targets")
                return cls("regression", target_names=names)
            bad = [s for s in samples if s.label is None or _to_float(s.label) is None]
            if bad:
                raise DataError(
                    f"sample {bad[0].id!r} ({bad[0].source}): label {bad[0].label!r} is not a number; "
                    "regression needs numeric labels or target columns (--targets COL,...)"
                )
            return cls("regression", target_names=["label"])
        unlabelled = [s for s in samples if s.label is None]
        if unlabelled:
            raise DataError(f"sample {unlabelled[0].id!r} ({unlabelled[0].source}) has no label")
        classes = sorted(set(labels))
        if len(classes) < 2:
            raise DataError(
                f"the labels hold only one class ({classes[0]!r}); classification needs at least two "
                "(for numeric targets use --task regression)"
            )
        return cls("classification", class_names=classes)

    def check(self, samples: list[Sample]) -> None:
        """Raise for the first sample whose target this spec cannot encode (e.g. an unknown label)."""
        for sample in samples:
            self._encode(sample)

    def encode(self, sample: Sample) -> torch.Tensor:
        return self._encode(sample)

    def _encode(self, sample: Sample) -> torch.Tensor:
        if self.task == "classification":
            if sample.label is None:
                raise DataError(f"sample {sample.id!r} ({sample.source}) has no label")
            try:
                return torch.tensor(self._index[sample.label], dtype=torch.long)
            except KeyError:
                raise DataError(
                    f"sample {sample.id!r} ({sample.source}) has label {sample.label!r}, which the model does "
                    f"not know (its classes: {', '.join(self.class_names)}); remove the sample or retrain"
                ) from None
        if sample.targets is not None:
            absent = [n for n in self.target_names if n not in sample.targets]
            if absent:
                raise DataError(f"sample {sample.id!r} ({sample.source}) lacks target column(s) {absent}")
            values = [sample.targets[n] for n in self.target_names]
        elif sample.label is not None and _to_float(sample.label) is not None:
            values = [_to_float(sample.label)]
        else:
            raise DataError(f"sample {sample.id!r} ({sample.source}) has no numeric target")
        if len(values) != len(self.target_names):
            raise DataError(
                f"sample {sample.id!r} has {len(values)} targets; the model predicts {len(self.target_names)} "
                f"({', '.join(self.target_names)})"
            )
        return torch.tensor(values, dtype=torch.float32)

    @property
    def _index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.class_names)}

    def class_counts(self, samples: list[Sample]) -> torch.Tensor:
        counts = Counter(s.label for s in samples)
        return torch.tensor([counts.get(c, 0) for c in self.class_names], dtype=torch.float32)


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
