"""``seqvision tune``: an Optuna search over heads and training options, on a frozen backbone's cached
features, validated on the run's own split; the best trial reproduced as a run and tested once.

* Before the first trial the CNN runs once per image and pooling the space can draw (each pooling is its
  own feature-cache key); every trial then trains on cached features only, in this process.
* TPE sampler (seeded with the run's seed), median pruner fed each epoch's validation metric.
* The study lives in ``OUT/study.db`` (Optuna's SQLite storage): the same command run again continues it,
  and ``--trials`` counts finished trials (completed or pruned) in all runs together.
* The first trial is the run's own recipe (the flags given, the defaults otherwise), so the search has
  the default to beat.
* Motion trials (:mod:`seqvision.tuning.motion`, ``--motion auto|off|only``) fine-tune the CNN's last stages
  with a temporal shift on the cached maps of its frozen stages, computed once before the first trial; the
  first of them is the README's recipe for order that lives in motion.
* The test split is never read during the search: trials fit on train and validate on val.
* ``--timeout`` bounds the trials and the best trained again together (:mod:`seqvision.tuning.deadline`);
  failures are counted per choice, and a value that always fails is no longer drawn
  (:mod:`seqvision.tuning.failures`).
* At the end: ``best_config.yaml`` (``seqvision train --config`` reproduces the best trial), that run
  trained and evaluated on val and test in ``OUT/best-<trial>``, and ``OUT/report.html``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L

from seqvision.config import RunConfig, apply_overrides, save_config, validate
from seqvision.errors import ConfigError, SeqVisionError, first_line
from seqvision.io import atomic_write_text
from seqvision.models.temporal import available_heads
from seqvision.tasks import task_of
from seqvision.training.datamodule import prepare_data
from seqvision.training.fit import MAXIMIZE, cache_stage_maps, fit
from seqvision.training.tracking import StudyTracker, Tracking
from seqvision.tuning.deadline import Deadline, OutOfTime, best_retrain_seconds, shortest_trial_seconds
from seqvision.tuning.failures import drawn_excluded, excluded_choices, failures_text, finished
from seqvision.tuning.motion import RECIPE, is_motion, motion_space
from seqvision.tuning.space import (
    MOTION,
    MOTION_OPTIONS,
    SECTION_OF,
    Domain,
    as_overrides,
    drawn,
    load_space,
    poolings,
    suggest,
    with_fixed,
)
from seqvision.workflows import extract, train_and_evaluate

log = logging.getLogger("seqvision")

STUDY_NAME = "seqvision-tune"
MAX_FAILURES = 3  # trials in a row that fail (diverged, out of memory) before the search stops
MAX_SKIPS = 200  # draws in a row of excluded values before the search stops (the sampler keeps to them)


@dataclass
class TuneResult:
    out_dir: Path
    best_trial: int  # numbered from 1, as printed
    best_value: float
    best_params: dict[str, Any]
    best_config: Path
    best_run: Path  # the best trial trained again with best_config.yaml, evaluated on val and test
    reproduced_value: float  # the metric of that run: equals best_value when deterministic (NaN: not trained again)
    test_metrics: dict | None
    report: Path
    finished: int  # completed and pruned trials in the study (draws of excluded values not counted)
    pruned: int  # of which pruned, or stopped by --timeout
    retrain_command: str | None = None  # --timeout left no time to train the best again: the command that does
    motion_trials: int = 0  # of the finished trials, the motion trials (tuning.motion)


def tune(
    cfg: RunConfig, out_dir: str | Path, *, trials: int = 50, timeout: float | None = None, metric: str | None = None,
    motion: str = "auto",
    space_file: str | Path | None = None, say: Callable[[str], None] = print, tracking: Tracking | None = None,
) -> TuneResult:
    """Search the space (:mod:`seqvision.tuning.space`) for the options that score best on validation.

    ``cfg``: the run's options (data, backbone, weights, anything not searched); its backbone is frozen
    and trials train on its cached features. ``trials``: finished trials in the study in all (a study
    already in ``out_dir`` continues). ``timeout``: seconds for this call's trials and the best trained
    again, counted once the feature cache is filled (see :mod:`seqvision.tuning.deadline`). ``metric``: a
    validation metric the task logs (default: ``val_acc`` for classes, ``val_mae`` for numbers).
    ``motion``: ``auto`` (the README's recipe for order in motion tried as trial 2, more motion trials while
    one scores as well as the best head trial), ``only`` (motion trials only) or ``off`` (heads only); see
    :mod:`seqvision.tuning.motion`.
    ``tracking``: the loggers; with MLflow the study is a run and each trial a run nested under it
    (:class:`~seqvision.training.tracking.StudyTracker`).
    """
    try:
        import optuna
    except ModuleNotFoundError:
        raise ConfigError('seqvision tune needs Optuna: pip install "seqvision[tune]"') from None

    space = load_space(space_file, available_heads(), motion=motion != "off")  # a bad space file fails before any work
    space = motion_space(space, cfg, motion, say)  # before _tunable: it reads --drop-stages and --trainable-stages
    cfg, out = _tunable(cfg, motion), Path(out_dir)
    if trials < 1 or (timeout is not None and timeout <= 0):
        raise ConfigError("--trials must be at least 1 and --timeout positive")
    data = prepare_data(cfg.data, seed=cfg.train.seed)
    metric = _checked_metric(metric, data)
    direction = "maximize" if metric in MAXIMIZE else "minimize"
    out.mkdir(parents=True, exist_ok=True)
    study = _open_study(out, cfg, metric, direction, space, optuna, say)
    if cfg.model.weights != "none":  # the CNN runs here, once per image and pooling (random weights: per trial)
        for pool in poolings(space, cfg.model.pool):
            stats, store = extract(_with(cfg, {"model": {"pool": pool}}), progress=False)
            say(f"feature cache, pool {pool}: {stats.cached} images cached, {stats.images} computed ({store.dir})")
    _cache_motion_maps(cfg, space, say)  # every motion trial reads these maps: computed here, once
    _enqueue_recipes(study, cfg, space, say)
    tracker = StudyTracker(tracking, out)
    tracker.start(metric=metric, config=cfg.to_dict())
    deadline = Deadline(timeout, time.monotonic)  # from here: start-up and the first extraction come on top
    _run_trials(study, cfg, space, metric, trials=trials, deadline=deadline, say=say, tmp_root=out, tracker=tracker)
    result = _finish(study, cfg, space, out, metric, say, deadline, tracker)
    tracker.finish(best_value=result.best_value, best_trial=result.best_trial, files=[result.report, result.best_config])
    return result


def _tunable(cfg: RunConfig, motion: str = "off") -> RunConfig:
    """The run's config as every trial starts from it: frozen backbone, trained on the feature cache (a
    motion trial changes that: its space's motion options)."""
    cfg = copy.deepcopy(cfg)
    if cfg.data.augment:
        raise ConfigError("tune trains on cached features: --augment changes the pixels every epoch; drop it")
    if cfg.data.cache == "off":
        raise ConfigError("tune trains on cached features: --cache off cannot be used")
    if cfg.model.trainable_stages and motion == "off":
        raise ConfigError("tune --motion off searches heads on a frozen backbone: drop --trainable-stages (or let motion "
                          "trials fine-tune that many stages: --motion auto or only)")
    if cfg.model.temporal_shift != "off":
        raise ConfigError("tune draws the temporal shift itself, in its motion trials (--motion auto or only): drop "
                          "--temporal-shift")
    cfg.model.freeze, cfg.model.trainable_stages = True, None  # the motion trials' stages are in their space
    validate(cfg, warn=False)
    return cfg


def _checked_metric(metric: str | None, data) -> str:
    kind = task_of(data.spec)
    if not data.splits["val"]:
        raise ConfigError("tune validates every trial: the split has no validation samples (raise --val-fraction)")
    metric = metric or ("val_acc" if data.spec.is_classes else "val_mae")
    known = [m for m in kind.logged_metrics() if m.startswith("val_")]
    if metric not in known:
        raise ConfigError(f"--metric {metric}: a {data.spec.task} run logs {', '.join(known)}")
    return metric


def _open_study(out: Path, cfg: RunConfig, metric: str, direction: str, space: dict[str, Domain], optuna,
                say: Callable[[str], None]):
    """The study in ``out/study.db``: created, or continued when it was made by the same command. Trials
    left running by a killed run are marked failed (they do not count)."""
    identity = {"config": cfg.to_dict(), "metric": metric, "space": {k: v.describe() for k, v in space.items()}}
    storage = f"sqlite:///{(out / 'study.db').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=STUDY_NAME, storage=storage, direction=direction, load_if_exists=True,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2),
    )
    # seeded, but on from the trials the study holds: a continued study must not draw its first ones again
    study.sampler = optuna.samplers.TPESampler(seed=cfg.train.seed + len(study.trials))
    saved = study.user_attrs.get("identity")
    if saved is None:
        study.set_user_attr("identity", json.loads(json.dumps(identity)))
    elif saved != json.loads(json.dumps(identity)):
        raise ConfigError(
            f"{out / 'study.db'} holds a study made with other options (data, backbone, metric or space); run the "
            "same command to continue it, or choose another --out"
        )
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)  # left by a killed run: does not count
    return study


def _enqueue_recipes(study, cfg: RunConfig, space: dict[str, Domain], say: Callable[[str], None]) -> None:
    """The first trials of a study: the run's own recipe (a head trial), then, with motion trials, the README's
    recipe for order that lives in motion (:data:`~seqvision.tuning.motion.RECIPE`, on the run's other
    options); with ``--motion only``, that recipe alone. Again if a kill cut them short."""
    import optuna

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.WAITING)
    if study.get_trials(deepcopy=False, states=done):
        return
    kinds = space[MOTION].choices if MOTION in space else (False,)
    if False in kinds:
        study.enqueue_trial(_default_params(cfg, space, say), skip_if_exists=False)
    if True in kinds:
        recipe = _with(cfg, as_overrides(RECIPE))
        study.enqueue_trial(_default_params(recipe, space, say, motion=True, first=len(kinds)), skip_if_exists=False)


def _default_params(cfg: RunConfig, space: dict[str, Domain], say: Callable[[str], None], *, motion: bool = False,
                    first: int = 1) -> dict[str, Any]:
    """A recipe as trial ``first``: the run's own (``cfg``), or the motion recipe (``motion``): its value of each
    searched option that the domain holds (an option whose value the domain lacks is drawn instead, and said)."""
    params, outside = ({MOTION: motion} if MOTION in space else {}), []
    for name, domain in space.items():
        if name == MOTION or not drawn(name, head=cfg.model.head, motion=motion):  # e.g. hidden_size for mean
            continue
        value = getattr(getattr(cfg, SECTION_OF[name]), name)
        if domain.choices is not None and value in domain.choices:
            params[name] = value
        elif domain.low is not None and isinstance(value, (int, float)) and domain.low <= value <= domain.high:
            params[name] = value
        elif domain.choices is not None or domain.low is not None:
            outside.append(f"{name}={value}")
    if outside:
        recipe = "the motion recipe" if motion else "the run's own recipe"
        say(f"trial {first} is {recipe}, except {', '.join(outside)}: outside the search space, drawn instead")
    return params


def _cache_motion_maps(cfg: RunConfig, space: dict[str, Domain], say: Callable[[str], None]) -> None:
    """Compute the frozen stages' maps that every motion trial reads (one cut, one cache key), before the
    deadline's clock starts, as the frozen features are. Maps that cannot be cached (over ``--cache-budget``,
    a trunk that cannot be cut): with ``--motion auto`` one line says so and the motion options leave
    ``space`` (head trials on frozen features only); with ``only``, a :class:`ConfigError`."""
    if MOTION not in space:
        return
    fixed = {name: space[name].fixed for name in MOTION_OPTIONS if name in space and space[name].choices is None
             and space[name].low is None}
    with _quiet("seqvision"):  # its own line below says what fit's would
        report = cache_stage_maps(_with(cfg, as_overrides(fixed)))
    if isinstance(report, str):
        if space[MOTION].choices == (True,):
            raise ConfigError(f"--motion only: {report}")
        say(f"no motion trials: {report}; tune stays on frozen features (--motion off says nothing)")
        for name in (MOTION, *MOTION_OPTIONS):
            space.pop(name, None)
        return
    cut = f"CNN without its last {fixed['drop_stages']} stages" if fixed["drop_stages"] else "whole CNN"
    kinds = ("every trial is one" if space[MOTION].choices == (True,) else
             "the first (trial 2) is the README's recipe; more are drawn while one scores at least as well as the "
             "best head trial")
    say(f"motion trials: the {cut}, its last {fixed['trainable_stages']} stage(s) fine-tuned with a temporal shift "
        f"on cached maps ({'x'.join(map(str, report['maps']))} per image; {report['cached']} images cached, "
        f"{report['computed']} computed, {report['dir']}); {kinds}")


def _with(cfg: RunConfig, overrides: dict[str, dict[str, Any]]) -> RunConfig:
    new = copy.deepcopy(cfg)
    apply_overrides(new, overrides, source="tune")
    return new


def _run_trials(study, cfg: RunConfig, space, metric: str, *, trials: int, deadline: Deadline,
                say: Callable[[str], None], tmp_root: Path, tracker: StudyTracker | None = None) -> None:
    import optuna

    tracker = tracker or StudyTracker(None, tmp_root)
    failures, skips = 0, 0
    options = [name for name, domain in space.items() if domain.choices is not None and len(domain.choices) > 1]
    excluded = excluded_choices(study.get_trials(deepcopy=False), options)
    while sum(finished(t) for t in study.get_trials(deepcopy=False)) < trials:
        if not _room_for_a_trial(study, cfg, space, deadline, say):
            break
        began, params, tracked = deadline.clock(), {}, None  # drawing the trial counts in its time
        trial = study.ask()
        try:
            params = suggest(trial, space, cfg.model.head)
            hit = drawn_excluded(params, excluded)
            if hit:  # a value that always failed: told pruned before any training, not counted (see failures)
                trial.set_user_attr("skipped", " ".join(hit))
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                skips += 1
                if skips >= MAX_SKIPS:
                    say(f"the sampler drew only excluded values ({', '.join(hit)}) {skips} times in a row: the search stops")
                    break
                continue
            skips = 0
            trial_cfg = _with(cfg, as_overrides(params))  # its --monitor (best epoch, early stopping) is the run's own
            tracked = tracker.trial(f"trial {trial.number + 1}", params)
            run = _run_trial(trial, trial_cfg, metric, tmp_root, deadline=deadline, keep=_kept_for_best(study, cfg), tracking=tracked)
        except (SeqVisionError, RuntimeError, ValueError) as exc:  # diverged (--on-nan stop), out of memory, ...
            tracker.trial_end(tracked, state="failed", error=first_line(exc))
            trial.set_user_attr("error", first_line(exc))
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            failures += 1
            say(f"trial {trial.number + 1}/{trials}: failed ({first_line(exc)}) | {_params_text(params)}")
            if failures >= MAX_FAILURES:
                raise ConfigError(f"{failures} trials in a row failed, the last with: {first_line(exc)}") from None
            now = excluded_choices(study.get_trials(deepcopy=False), options)
            for name, value in now:
                if (name, value) not in excluded:
                    say(f"{name}={value} failed in every trial that drew it ({first_line(exc)}): not drawn again")
            excluded = now
            continue
        except BaseException:  # interrupted: the trial does not count, the study continues next time
            tracker.trial_end(tracked, state="failed", error="interrupted")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        failures = 0
        seconds = deadline.clock() - began
        if run.seconds_per_epoch is not None:  # --timeout: the pace of its epochs, and the rest of its time
            trial.set_user_attr("seconds_per_epoch", run.seconds_per_epoch)
            trial.set_user_attr("setup_seconds", max(0.0, seconds - run.epochs * run.seconds_per_epoch))
        if run.stopped_at is not None:
            trial.set_user_attr("stopped", "timeout")
        if run.pruned_at is not None or run.stopped_at is not None:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, run.value)
        tracker.trial_end(tracked, value=run.value, state="stopped" if run.stopped_at is not None else
                          "pruned" if run.pruned_at is not None else "complete")
        say(_trial_line(study, trial.number, params, metric, run, seconds, trials))


def _best(study):
    try:
        return study.best_trial
    except ValueError:  # no completed trial yet
        return None


def _kept_for_best(study, cfg: RunConfig) -> float:
    """Seconds kept for training the best so far again (0 before any trial completed)."""
    return best_retrain_seconds(_best(study), cfg.train.max_epochs)


def _room_for_a_trial(study, cfg: RunConfig, space, deadline: Deadline, say: Callable[[str], None]) -> bool:
    """Whether a new trial starts: one of the kinds the space draws fits in the time left (its shortest
    trial at the pace of the trials of its kind: a motion trial's epochs take far longer than a head
    trial's). With both kinds, the next trial is made a head trial (enqueued) when no motion trial fits, or
    while motion trials are not worth it (:func:`_motion_pays`)."""
    trials = study.get_trials(deepcopy=False)
    kinds = space[MOTION].choices if MOTION in space else (False,)
    fitting = [kind for kind in kinds if not deadline.bounded or deadline.left() > _shortest(trials, kind, cfg, space)
               + _kept_for_best(study, cfg)]
    if not fitting:
        say(f"--timeout {deadline.seconds:g} s: {max(0.0, deadline.left()):.1f} s left, kept for training the best again; "
            "no new trial")
        return False
    waiting = any(t.state.name == "WAITING" for t in trials)  # the recipes, drawn first
    if len(kinds) > 1 and not waiting and (True not in fitting or not _motion_pays(study, trials)):
        study.enqueue_trial({MOTION: False}, skip_if_exists=False)
    return True


def _shortest(trials, motion: bool, cfg: RunConfig, space) -> float:
    """The shortest trial of this kind the space can draw, at the pace of the finished trials of its kind."""
    epochs = space.get("max_epochs")
    fewest = cfg.train.max_epochs if epochs is None else min(int(v) for v in (epochs.choices or [epochs.low or epochs.fixed]))
    return shortest_trial_seconds([t for t in trials if is_motion(t) == motion], fewest)


def _motion_pays(study, trials) -> bool:
    """``--motion auto`` draws more motion trials only while one scored at least as well as the best head
    trial (or none has run yet: the recipe is the first): order-free data pays for one motion trial."""
    if not any(is_motion(t) and finished(t) for t in trials):
        return True
    values = {kind: [t.value for t in trials if is_motion(t) == kind and t.state.name == "COMPLETE"] for kind in (False, True)}
    if not values[True]:
        return False
    pick = max if study.direction.name == "MAXIMIZE" else min
    return not values[False] or pick(values[True]) == pick(values[True] + values[False])


@dataclass
class TrialRun:
    value: float  # the metric at the epoch the run's monitor picks (so far, when pruned or stopped)
    pruned_at: int | None = None  # the epoch the pruner stopped it at
    stopped_at: int | None = None  # the epoch --timeout stopped it at
    epochs: int = 0  # epochs run
    seconds_per_epoch: float | None = None  # measured (--timeout), from the first epoch's start


def _run_trial(trial, cfg: RunConfig, metric: str, tmp_root: Path, *, deadline: Deadline | None = None,
               keep: float = 0.0, tracking: Tracking | None = None) -> TrialRun:
    """Fit one trial in a temporary folder. ``deadline``: it stops at the end of an epoch when one more
    would eat into the ``keep`` seconds kept for training the best again."""
    import optuna

    report = TrialReport(trial, metric, monitor=monitor_of(cfg), deadline=deadline, keep=keep, epochs=cfg.train.max_epochs)
    with tempfile.TemporaryDirectory(prefix=".trial-", dir=tmp_root) as tmp, warnings.catch_warnings(), _quiet("seqvision"):
        warnings.simplefilter("ignore")  # the same notices every trial (Lightning's, the cache's): said once, above
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        try:
            fit(cfg, Path(tmp) / "run", progress=False, callbacks=[report], checkpoints=False,  # its best is trained again
                tracking=tracking)
        except optuna.TrialPruned:
            return TrialRun(report.best, pruned_at=report.epoch, epochs=report.epoch, seconds_per_epoch=report.seconds_per_epoch)
        except OutOfTime:
            return TrialRun(report.best, stopped_at=report.epoch, epochs=report.epoch, seconds_per_epoch=report.seconds_per_epoch)
    return TrialRun(report.best, epochs=report.epoch, seconds_per_epoch=report.seconds_per_epoch)


@contextlib.contextmanager
def _quiet(name: str):
    """Logger ``name`` says only errors inside: a trial's notices (the cached maps read, ...) are the same
    every trial, and said once before the first."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def monitor_of(cfg: RunConfig) -> str:
    """The metric that picks a run's best epoch and stops it early (as ``fit`` decides; tune's runs have
    validation samples)."""
    return cfg.train.monitor or "val_loss"


class TrialReport(L.Callback):
    """Reports each epoch's value of ``metric`` to the trial and prunes when Optuna's pruner says so.

    ``best``: ``metric`` at the epoch the run's ``monitor`` picks (the epoch ``best.ckpt`` holds, first of
    ties, as Lightning's checkpointing keeps it), so a trial's value is what its run's best model scores,
    whatever the monitor. ``trial`` None: only record (the best trial trained again). ``deadline``: measure
    the seconds per epoch, and stop (:class:`OutOfTime`) at the end of an epoch when another one would
    leave less than ``keep`` seconds (kept for training the best again) before the deadline."""

    def __init__(self, trial, metric: str, *, monitor: str, deadline: Deadline | None = None, keep: float = 0.0,
                 epochs: int | None = None) -> None:
        self.trial, self.metric, self.monitor = trial, metric, monitor
        self.deadline, self.keep, self.epochs = deadline, keep, epochs
        self.training_from: float | None = None  # the first epoch's start: the fit's setup is not an epoch
        self.seconds_per_epoch: float | None = None
        self.best = float("nan")
        self._best_monitor: float | None = None
        self.epoch = 0

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.deadline is not None:
            self.training_from = self.deadline.clock()

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        import optuna

        metrics = trainer.callback_metrics
        if trainer.sanity_checking or self.metric not in metrics or self.monitor not in metrics:
            return
        value, watched = float(metrics[self.metric]), float(metrics[self.monitor])
        self.epoch = trainer.current_epoch + 1
        first = self._best_monitor is None
        if first or (watched > self._best_monitor if self.monitor in MAXIMIZE else watched < self._best_monitor):
            self._best_monitor, self.best = watched, value
        if self.deadline is not None and self.training_from is not None:
            self.seconds_per_epoch = (self.deadline.clock() - self.training_from) / self.epoch
        if self.trial is None:
            return
        self.trial.report(value, self.epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {self.epoch}")
        if self.deadline is not None and self.deadline.bounded and (self.epochs is None or self.epoch < self.epochs):
            if self.deadline.left() < (self.seconds_per_epoch or 0.0) + self.keep:
                raise OutOfTime(f"stopped at epoch {self.epoch}: --timeout")


def _trial_line(study, number: int, params: dict, metric: str, run: TrialRun, seconds: float, trials: int) -> str:
    shown = _params_text(params)
    if run.stopped_at:
        state = f"stopped at epoch {run.stopped_at} by --timeout ({metric} {run.value:.4f} so far, not a result)"
    elif run.pruned_at:
        state = f"pruned at epoch {run.pruned_at}, {metric} {run.value:.4f}"
    else:
        state = f"{metric} {run.value:.4f}"
    best = _best(study)
    best = f"best {best.value:.4f} (trial {best.number + 1})" if best is not None else "no completed trial yet"
    return f"trial {number + 1}/{trials}: {state} | {best} | {seconds:.1f} s | {shown}"


def _params_text(params: dict) -> str:
    return " ".join(f"{k}={_short(v)}" for k, v in params.items())


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _finish(study, cfg: RunConfig, space, out: Path, metric: str, say: Callable[[str], None],
            deadline: Deadline, tracker: StudyTracker | None = None) -> TuneResult:
    """best_config.yaml, the best trial reproduced and tested (when --timeout leaves the time), report.html,
    and the failures by choice."""
    from seqvision.tuning.report import write_tune_report

    options = [name for name, domain in space.items() if domain.choices is not None and len(domain.choices) > 1]
    trials = study.get_trials(deepcopy=False)
    failures = failures_text(trials, options)
    if failures:
        say(failures)
    best = _best(study)
    if best is None:
        raise ConfigError(f"no trial of {out / 'study.db'} completed (all pruned or failed); run more --trials")
    best_cfg = _with(cfg, as_overrides(with_fixed(best.params, space, cfg.model.head)))  # a motion trial: its cut too
    save_config(best_cfg, out / "best_config.yaml")
    run_dir = out / f"best-{best.number + 1}"
    reproduced, command = _read_metrics(run_dir / "reproduced.json"), None
    need = _kept_for_best(study, cfg)
    if reproduced is None and deadline.left() < need:  # the estimate does not fit: said, not overrun
        command = f"seqvision train --config {out / 'best_config.yaml'} --out {run_dir}"
        say(f"--timeout {deadline.seconds:g} s: {max(0.0, deadline.left()):.1f} s left, training the best again needs about "
            f"{need:.1f} s; not trained again. Run: {command}")
        reproduced = {metric: float("nan")}
    elif reproduced is None:  # not trained yet, or killed before the end: again from the start
        shutil.rmtree(run_dir, ignore_errors=True)
        say(f"best: trial {best.number + 1}, {metric} {best.value:.4f}; training it again with best_config.yaml in {run_dir}")
        recorder = TrialReport(None, metric, monitor=monitor_of(best_cfg))
        tracked = (tracker or StudyTracker(None, out)).trial(run_dir.name, best.params, folder_loggers=True)
        train_and_evaluate(best_cfg, run_dir, progress=False, callbacks=[recorder], tracking=tracked)
        reproduced = {metric: recorder.best, "trial": best.number + 1, "trial_value": best.value}
        atomic_write_text(run_dir / "reproduced.json", json.dumps(reproduced))
    if command is None:
        say(f"trained again: {metric} {reproduced[metric]:.4f} (the trial: {best.value:.4f})")
    test = None if command else _read_metrics(run_dir / "test" / "metrics.json")
    done = [t for t in trials if finished(t)]
    pruned = sum(t.state.name == "PRUNED" for t in done)
    report = write_tune_report(study, out / "report.html", metric=metric, best_run=run_dir, test_metrics=test,
                               retrain_command=command, failures=failures)
    return TuneResult(out, best.number + 1, best.value, dict(best.params), out / "best_config.yaml", run_dir,
                      reproduced[metric], test, report, len(done), pruned, command, sum(map(is_motion, done)))


def _read_metrics(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None
