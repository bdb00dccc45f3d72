"""Failures of ``tune`` counted per choice: a head (or any categorical value) that fails every time is
said, and no longer drawn.

A trial that fails (diverged under ``--on-nan stop``, out of memory, an error of the head) is recorded
with its error. For each value of each categorical option, its failed and finished trials are counted.

**Excluded** are the values that explain the failures, chosen greedily: the value with the most failed
trials among those that failed at least :data:`MIN_FAILURES` times and never finished (ties: the option
first in the space, so ``head`` before ``batch_size``) is excluded, the trials it explains are set aside,
and the next is looked for among the failures left. A value that only shared failing trials with the
culprit (``batch_size=64`` drawn twice with a crashing head) is not excluded once the culprit explains
them; the set is worked out again after every trial. Values that succeed at least once are never
excluded: sometimes failing is the search's business, not this rule's.

The sampler cannot be told to leave out a value (Optuna's categorical domains are fixed), so a trial that
draws an excluded value is told pruned before any training, marked ``skipped``, and not counted in
``--trials``; the TPE sampler ranks a pruned trial without values last, so it draws such values less.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MIN_FAILURES = 2  # failed trials, and no finished one, before a value is excluded


@dataclass
class ChoiceCount:
    failed: int = 0
    finished: int = 0  # completed or pruned (it ran)
    error: str = ""  # the last failure's


def failed(trial) -> bool:
    """A trial that failed during the search (not one a kill interrupted: those carry no error)."""
    return trial.state.name == "FAIL" and "error" in trial.user_attrs


def finished(trial) -> bool:
    """A trial that ran to a value (completed, pruned or stopped by the timeout), not a skipped draw."""
    return trial.state.name in ("COMPLETE", "PRUNED") and "skipped" not in trial.user_attrs


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b  # True is not 1: bidirectional=True is not batch_size=1


def choice_counts(trials: Iterable, options: list[str]) -> dict[tuple[str, Any], ChoiceCount]:
    """``(option, value) -> ChoiceCount`` for the categorical ``options`` (in the space's order)."""
    counts: dict[tuple[str, Any], ChoiceCount] = {}
    for trial in trials:
        bad, ran = failed(trial), finished(trial)
        if not (bad or ran):
            continue
        for name in options:
            if name not in trial.params:
                continue
            count = counts.setdefault((name, trial.params[name]), ChoiceCount())
            if bad:
                count.failed += 1
                count.error = trial.user_attrs["error"]
            else:
                count.finished += 1
    return counts


def excluded_choices(trials: list, options: list[str]) -> list[tuple[str, Any]]:
    """The values no longer drawn (see the module docstring), in the order they were chosen."""
    counts = choice_counts(trials, options)
    unexplained = [t for t in trials if failed(t)]
    chosen: list[tuple[str, Any]] = []
    while unexplained:
        left: dict[tuple[str, Any], int] = {}
        for trial in unexplained:
            for name in options:
                if name in trial.params and counts[(name, trial.params[name])].finished == 0:
                    key = (name, trial.params[name])
                    left[key] = left.get(key, 0) + 1
        candidates = [(n, -options.index(k[0]), k) for k, n in left.items() if n >= MIN_FAILURES]
        if not candidates:
            break
        _, _, key = max(candidates, key=lambda c: (c[0], c[1]))
        chosen.append(key)
        unexplained = [t for t in unexplained if not _same(t.params.get(key[0]), key[1])]
    return chosen


def drawn_excluded(params: dict[str, Any], excluded: list[tuple[str, Any]]) -> list[str]:
    """``option=value`` for each excluded value among a trial's ``params``."""
    return [f"{name}={value}" for name, value in excluded if name in params and _same(params[name], value)]


def failures_text(trials: list, options: list[str]) -> str | None:
    """One line: the failed trials of each value that failed at least once, and the excluded ones."""
    counts = choice_counts(trials, options)
    excluded = excluded_choices(trials, options)
    shown = [
        f"{name}={value} {c.failed} of {c.failed + c.finished}" + (" (excluded)" if (name, value) in excluded else "")
        for (name, value), c in counts.items() if c.failed
    ]
    return f"failed trials by choice: {', '.join(shown)}" if shown else None
