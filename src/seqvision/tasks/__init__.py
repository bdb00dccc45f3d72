"""What is learnt and what the outputs mean: :class:`TargetSpec` (the kind and its names, read from the
data, stored in checkpoints) and one :class:`Task` per kind (:mod:`seqvision.tasks.kinds`)."""

from seqvision.tasks.kinds import (
    AUTO_ORDER,
    TASKS,
    Classification,
    FrameClassification,
    FrameRegression,
    Multilabel,
    Regression,
    Task,
    TaskLoss,
    task_of,
)
from seqvision.tasks.spec import TargetSpec

__all__ = [
    "AUTO_ORDER", "TASKS", "Classification", "FrameClassification", "FrameRegression", "Multilabel", "Regression",
    "TargetSpec", "Task", "TaskLoss", "task_of",
]
