"""``tune --timeout``: one deadline for the trials and the best trained again.

The clock starts once the feature cache is filled (start-up and the first extraction come on top).
Each trial's seconds per epoch and its setup (the rest of its time: drawing it, data, model, feature
store, sanity check) are measured and kept on the trial, so the time the best needs to train again is estimated from its own:
:data:`RETRAIN_MARGIN` x ((its epochs + 1) x its seconds per epoch + :data:`RETRAIN_SETUPS` x its setup):
the run's epochs and an evaluation pass, and its fixed costs (setup, checkpoints, evaluation on val and
test, the report). A heuristic: on a tiny study, fixed costs dominate; on a real one, the epochs do.
That much is kept for the end:

* a new trial starts only when the shortest trial the space can draw, at the mean pace of the trials so
  far, fits before the time kept for the best;
* a running trial stops at the end of an epoch when one more epoch would eat into the time kept for the
  best (Optuna's pruned state, marked ``stopped: timeout``: its partial score is never taken as a
  result);
* the best is trained again only when its estimate fits in what is left; otherwise one line says the
  command that trains it.

With motion trials (:mod:`seqvision.tuning.motion`), whose epochs take minutes where a head trial's take
a second, each kind is paced by its own finished trials: the first motion trial's epochs set the pace of
the next ones, and when only a head trial still fits, the next trial is made one
(:func:`seqvision.tuning.study._room_for_a_trial`). Their maps are cached before the clock starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from seqvision.tuning.failures import finished

RETRAIN_MARGIN = 1.25  # the estimate of the best's retraining, against what a trial's pace does not show
# a retraining's fixed costs in trial setups: measured on the tests' tiny study (tiny CNN, 16 px), where the
# setup, checkpoints, evaluation on val and test with diagnostics, and the report came to about 7 setups
RETRAIN_SETUPS = 6


class OutOfTime(Exception):
    """Raised at the end of an epoch: the next one would pass the time kept for training the best again."""


@dataclass
class Deadline:
    """``seconds`` from now on ``clock`` (None: no deadline)."""

    seconds: float | None
    clock: Callable[[], float]
    end: float = field(init=False)

    def __post_init__(self) -> None:
        self.end = math.inf if self.seconds is None else self.clock() + self.seconds

    def left(self) -> float:
        return self.end - self.clock()

    @property
    def bounded(self) -> bool:
        return self.seconds is not None


def retrain_seconds(seconds_per_epoch: float, epochs: int, setup: float = 0.0) -> float:
    """The estimate of training a trial's recipe again as a run, evaluating it on val and test and writing
    the report (see the module docstring)."""
    return RETRAIN_MARGIN * ((epochs + 1) * seconds_per_epoch + RETRAIN_SETUPS * setup)


def seconds_per_epoch(trial) -> float | None:
    """A finished trial's measured seconds per epoch: as it recorded them, else from Optuna's timestamps
    and its reported epochs, setup included (a trial of an older run); None when unknown."""
    measured = trial.user_attrs.get("seconds_per_epoch")
    if measured is not None:
        return float(measured)
    if trial.datetime_start and trial.datetime_complete and trial.intermediate_values:
        return (trial.datetime_complete - trial.datetime_start).total_seconds() / max(trial.intermediate_values)
    return None


def best_retrain_seconds(trial, default_epochs: int) -> float:
    """The time kept for training ``trial`` (the best so far) again; 0 when none is known yet."""
    if trial is None:
        return 0.0
    pace = seconds_per_epoch(trial)
    if pace is None:
        return 0.0
    return retrain_seconds(pace, int(trial.params.get("max_epochs", default_epochs)), trial.user_attrs.get("setup_seconds", 0.0))


def shortest_trial_seconds(trials, fewest_epochs: int) -> float:
    """The shortest trial the space can draw (``fewest_epochs``), at the mean pace and setup of the finished
    trials; 0 before any (the first trial always starts)."""
    times = [p * fewest_epochs + t.user_attrs.get("setup_seconds", 0.0)
             for t in trials if finished(t) and (p := seconds_per_epoch(t)) is not None]
    return sum(times) / len(times) if times else 0.0
