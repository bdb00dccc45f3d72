"""What is learnt: the kind of task and its class or target names, read from the data, stored in checkpoints.

Tasks: ``classification`` (one class per sample), ``multilabel`` (any number of classes per sample),
``regression`` (numbers per sample), and the per-image forms ``frame_classification`` (one class per
image: sequence labelling) and ``frame_regression`` (numbers per image). How each kind reads and encodes
its targets is the kind's own (:mod:`seqvision.tasks.kinds`); this is the plain description of one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from seqvision.data.samples import Sample
from seqvision.tasks.kinds import AUTO_ORDER, TASKS, Task


@dataclass
class TargetSpec:
    task: str
    class_names: list[str] = field(default_factory=list)
    target_names: list[str] = field(default_factory=list)

    @property
    def kind(self) -> type[Task]:
        """The :class:`Task` class of ``task``: everything that depends on the kind asks it."""
        return TASKS[self.task]

    @property
    def num_outputs(self) -> int:
        return len(self.class_names) if self.is_classes else len(self.target_names)

    @property
    def is_classes(self) -> bool:
        return self.kind.is_classes

    @property
    def per_image(self) -> bool:
        """One output per image (sequence labelling) instead of one per sample."""
        return self.kind.per_image

    def to_dict(self) -> dict:
        return {"task": self.task, "class_names": list(self.class_names), "target_names": list(self.target_names)}

    @classmethod
    def from_dict(cls, raw: dict) -> "TargetSpec":
        if raw["task"] not in TASKS:
            raise ValueError(f"unknown task {raw['task']!r} (known: {', '.join(TASKS)})")
        return cls(raw["task"], list(raw.get("class_names", [])), list(raw.get("target_names", [])))

    @classmethod
    def infer(cls, samples: list[Sample], *, task: str = "auto", target_names: list[str] | None = None) -> "TargetSpec":
        """Read the task from the data (per-image columns, a 'labels' column, numbers, class labels): the
        first kind that finds its targets in ``samples``, unless ``task`` names one."""
        kind = next(k for k in AUTO_ORDER if k.found_in(samples)) if task == "auto" else TASKS[task]
        names = kind.names_from(samples, target_names)
        return cls(kind.name, class_names=names) if kind.is_classes else cls(kind.name, target_names=names)

    def check(self, samples: list[Sample]) -> None:
        """Raise for the first sample whose target this spec cannot encode (e.g. an unknown label)."""
        for sample in samples:
            self.encode(sample)

    def encode(self, sample: Sample, frame_indices: list[int] | None = None) -> torch.Tensor:
        """A sample's target: ``()`` class index, ``(K,)`` multi-hot or values; per-image tasks give
        ``(T,)`` classes or ``(T, K)`` values for the images at ``frame_indices`` (all when None)."""
        return self.kind.encode(self, sample, frame_indices)

    def class_counts(self, samples: list[Sample]) -> torch.Tensor:
        """Training examples per class: samples (classification), positives (multi-label), images (per-image)."""
        return self.kind.class_counts(self, samples)

    def sample_weights(self, samples: list[Sample]) -> torch.Tensor:
        """Per-sample weights for a class-balanced sampler: 1 / (training samples of its class)."""
        return self.kind.sample_weights(self, samples)
