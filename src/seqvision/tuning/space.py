"""The search space of ``seqvision tune``: which options a trial draws, from what, and for which heads.

A space maps option names (fields of the data, model and train sections of a run's config) to a
*domain*: a list of choices, a numeric range ``{low, high, log, step}`` (integers when both ends are
integers), or one fixed value. Options that only some heads take (``hidden_size``, ``num_layers``,
``bidirectional`` for the recurrent heads; ``d_model``, ``num_layers`` for the transformer) are drawn
only when the trial's head takes them, so a trial never sets an option without effect.

A ``--space`` YAML file holds the same mapping: each entry replaces the default domain of that option
(a list or range narrows or widens it, a single value fixes it), and options the default space lacks
may be added (e.g. ``label_smoothing: {low: 0.0, high: 0.2}``). Every entry is checked before the
first trial, naming the file and the option.

Motion trials (:mod:`seqvision.tuning.motion`) draw ``temporal_shift`` and ``backbone_lr`` besides these; a
trial's kind (``motion``) is drawn before its head when both kinds are searched.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seqvision.config import (
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    load_yaml_config,
    validate,
)
from seqvision.errors import ConfigError

if TYPE_CHECKING:
    import optuna

_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
SECTION_OF = {f.name: s for s, cls in _SECTIONS.items() for f in dataclasses.fields(cls)}
# each option's number type (None for the others), from the config's annotations ("int | None" is int)
FIELD_TYPE = {f.name: int if str(f.type).startswith("int") else float if str(f.type).startswith("float") else None
              for cls in _SECTIONS.values() for f in dataclasses.fields(cls)}
# options a trial may not draw: they name the data, the outputs or the machine, they would leak the test
# split into the search (the split itself is the run's and stays fixed), or they change the cached features
NOT_SEARCHABLE = {"data", "task", "targets", "group_by", "val_fraction", "test_fraction", "cache", "cache_dtype",
                  "num_workers", "seed", "accelerator", "devices", "monitor", "backbone", "weights", "freeze",
                  "memory_budget", "diagnostics", "deterministic", "chunk_size", "checkpointing", "shuffle_frames",
                  # what the cached features depend on: a trial drawing one would extract again or run the CNN live
                  "image_size", "resize_size", "mean", "std", "exact_decode", "augment", "hflip", "trainable_stages",
                  "freeze_bn", "feature_precision", "precision", "cache_budget", "on_bad_image", "num_nodes",
                  "sync_batchnorm", "drop_stages", "feature_runtime", "video_decoder"}
# frame sampling: the features were cached for the run's frames before the first trial; a trial with other
# frames of a video would miss the cache and run the CNN inside the trial (and the README promises it is fixed)
FRAME_SAMPLING = ("num_frames", "sampling", "eval_sampling", "stride", "fps", "eval_clips", "min_images", "short_samples")
NOT_SEARCHABLE |= set(FRAME_SAMPLING)
MOTION = "motion"  # a trial's kind, drawn first when both are searched: True, a motion trial (tuning.motion)
# drawn in motion trials only: the shift and the backbone's learning rate (searched), and the cut and what
# makes the trial learn its last stages on cached maps (fixed by tuning.motion.motion_space)
MOTION_OPTIONS = ("temporal_shift", "backbone_lr", "drop_stages", "trainable_stages", "freeze", "augment")
RECURRENT = ("lstm", "gru", "attention")
# option -> the heads that take it (absent: every head)
HEAD_OPTIONS = {"hidden_size": RECURRENT, "bidirectional": RECURRENT, "lstm_dropout": RECURRENT, "input_norm": RECURRENT,
                "readout": ("lstm", "gru"), "num_layers": (*RECURRENT, "transformer"), "d_model": ("transformer",),
                "nhead": ("transformer",)}


@dataclass(frozen=True)
class Domain:
    """One option's domain: ``choices``, or ``low``..``high`` (``log`` scale, ``step``), or ``fixed``."""

    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    fixed: Any = None

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int) and not isinstance(self.low, bool)

    def suggest(self, trial: "optuna.Trial", name: str) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(name, list(self.choices))
        if self.low is not None:
            if self.integer:
                return trial.suggest_int(name, self.low, self.high, log=self.log, step=int(self.step or 1))
            return trial.suggest_float(name, float(self.low), float(self.high), log=self.log, step=self.step)
        return self.fixed

    def describe(self) -> Any:
        if self.choices is not None:
            return list(self.choices)
        if self.low is not None:
            return {"low": self.low, "high": self.high, **({"log": True} if self.log else {}),
                    **({"step": self.step} if self.step else {})}
        return self.fixed


def default_space(heads: list[str]) -> dict[str, Domain]:
    """The default space: every registered head, its size and depth, direction, motion cue, pooling,
    dropout, learning rate, weight decay, batch size and epochs; for motion trials, the temporal shift and
    the backbone's learning rate."""
    return {
        "head": Domain(choices=tuple(heads)),
        "hidden_size": Domain(choices=(64, 128, 256, 512)),
        "num_layers": Domain(choices=(1, 2)),
        "bidirectional": Domain(choices=(False, True)),
        "d_model": Domain(choices=(64, 128, 256)),
        "temporal_diff": Domain(choices=(False, True)),
        "pool": Domain(choices=("avg", "max", "grid2")),
        "dropout": Domain(low=0.0, high=0.5),
        "lr": Domain(low=1e-4, high=1e-2, log=True),
        "weight_decay": Domain(low=1e-5, high=1e-1, log=True),
        "batch_size": Domain(choices=(8, 16, 32, 64)),
        "max_epochs": Domain(low=5, high=30, step=5),
        # motion trials only (tuning.motion): the shift in the learning stages, and their learning rate
        "temporal_shift": Domain(choices=("off", "bidirectional", "causal")),
        "backbone_lr": Domain(low=1e-4, high=3e-3, log=True),
    }


def load_space(path: str | Path | None, heads: list[str], *, motion: bool = True) -> dict[str, Domain]:
    """The default space with ``path``'s entries applied (see the module docstring); a clear
    :class:`ConfigError` naming the file and the option for anything that cannot be searched. ``motion``
    False: no motion trials, so no motion options (a file naming one is refused)."""
    space = default_space(heads)
    if not motion:
        space = {name: domain for name, domain in space.items() if name not in MOTION_OPTIONS}
    if path is None:
        return space
    raw = load_yaml_config(path, what="--space")
    if not isinstance(raw, dict):
        raise ConfigError(f"--space {path}: expected a mapping of options to domains, got {type(raw).__name__}")
    for name, value in raw.items():
        if not motion and name in MOTION_OPTIONS:
            raise ConfigError(f"--space {path}: {name!r} is drawn in motion trials only, and --motion off has none")
        space[name] = parse_domain(value, name=name, where=f"--space {path}")
    return space


def parse_domain(value: Any, *, name: str, where: str) -> Domain:
    """One YAML entry -> a Domain, its option and values checked against the config's own rules."""
    if name not in SECTION_OF:
        raise ConfigError(f"{where}: unknown option {name!r}; options are the fields of the data, model and train sections")
    if name in FRAME_SAMPLING:
        raise ConfigError(f"{where}: {name!r} cannot be searched: frame sampling is fixed for the whole study (the "
                          "features are cached for the run's frames before the first trial; other frames of a video "
                          f"would run the CNN inside every trial); set it with --{name.replace('_', '-')}")
    if name in NOT_SEARCHABLE:
        raise ConfigError(f"{where}: {name!r} cannot be searched (it names the data, the split or the machine, or changes "
                          "the cached features); set it with its flag")
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{where}: {name}: an empty list of choices")
        domain = Domain(choices=tuple(value))
    elif isinstance(value, dict):
        extra = set(value) - {"low", "high", "log", "step"}
        if extra or not {"low", "high"} <= set(value):
            raise ConfigError(f"{where}: {name}: a range is {{low: L, high: H}} with optional log and step, got {value}")
        low, high = value["low"], value["high"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low > high:
            raise ConfigError(f"{where}: {name}: low and high must be numbers with low <= high, got {low} and {high}")
        if value.get("log") and low <= 0:
            raise ConfigError(f"{where}: {name}: a log range needs low > 0, got {low}")
        if FIELD_TYPE.get(name) is float:  # 0 and 1 in YAML are ints: the option decides, not the literal
            low, high = float(low), float(high)
        elif FIELD_TYPE.get(name) is int and not (float(low).is_integer() and float(high).is_integer()):
            raise ConfigError(f"{where}: {name} takes whole numbers; got the range {low} to {high}")
        elif FIELD_TYPE.get(name) is int:
            low, high = int(low), int(high)
        domain = Domain(low=low, high=high, log=bool(value.get("log", False)), step=value.get("step"))
        _check_distribution(domain, name=name, where=where)
    else:
        domain = Domain(fixed=value)
    for v in _values(domain):  # each value must be one the option accepts (type, range, choices)
        check_value(name, v, where=where)
    return domain


def _check_distribution(domain: Domain, *, name: str, where: str) -> None:
    """The range as Optuna will draw it (log with a step, a zero or fractional integer step...): refused now,
    not at the first trial after the extraction."""
    import optuna

    try:
        if domain.integer:
            if domain.step is not None and (float(domain.step) != int(domain.step) or domain.step < 1):
                raise ValueError(f"an integer range takes a whole step of at least 1, got {domain.step}")
            optuna.distributions.IntDistribution(domain.low, domain.high, log=domain.log, step=int(domain.step or 1))
        else:
            optuna.distributions.FloatDistribution(float(domain.low), float(domain.high), log=domain.log, step=domain.step)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {name}: {exc}") from None


def check_value(name: str, value: Any, *, where: str) -> None:
    cfg = RunConfig()
    try:
        apply_overrides(cfg, {SECTION_OF[name]: {name: value}}, source=where)
        validate(cfg, warn=False)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {name}: {value!r} is not a value it takes ({exc})") from None


def _values(domain: Domain) -> list[Any]:
    if domain.choices is not None:
        return list(domain.choices)
    if domain.low is not None:
        return [domain.low, domain.high]
    return [domain.fixed]


def suggest(trial: "optuna.Trial", space: dict[str, Domain], base_head: str) -> dict[str, Any]:
    """Draw one trial's options: its kind first when the space has motion trials (``motion``), then the head.
    Head-specific options are drawn only for a head that takes them, motion options for a motion trial only."""
    params: dict[str, Any] = {}
    if MOTION in space:
        params[MOTION] = space[MOTION].suggest(trial, MOTION)
    head = space["head"].suggest(trial, "head") if "head" in space else base_head
    params["head"] = head
    for name, domain in space.items():
        if name not in (MOTION, "head") and drawn(name, head=head, motion=bool(params.get(MOTION))):
            params[name] = domain.suggest(trial, name)
    return params


def drawn(name: str, *, head: str, motion: bool) -> bool:
    """Whether a trial with ``head`` (a motion trial or not) draws option ``name``."""
    return head in HEAD_OPTIONS.get(name, (head,)) and (motion or name not in MOTION_OPTIONS)


def with_fixed(params: dict[str, Any], space: dict[str, Domain], base_head: str) -> dict[str, Any]:
    """A finished trial's ``params`` (Optuna's record: the values it drew) with the space's fixed values the
    trial took, so that its config is the trial's (``max_epochs: 15`` in a space file, a motion trial's cut)."""
    head, motion = params.get("head", base_head), bool(params.get(MOTION))
    fixed = {name: d.fixed for name, d in space.items() if d.choices is None and d.low is None and name != MOTION}
    return {**params, **{name: v for name, v in fixed.items() if name not in params and drawn(name, head=head, motion=motion)}}


def as_overrides(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{option: value}`` -> ``{section: {option: value}}``, as :func:`seqvision.config.apply_overrides` takes."""
    out: dict[str, dict[str, Any]] = {}
    for name, value in params.items():
        if name != MOTION:  # a trial's kind: its config is the motion options it drew
            out.setdefault(SECTION_OF[name], {})[name] = value
    return out


def poolings(space: dict[str, Domain], base_pool: str) -> list[str]:
    """The poolings trials can draw: each is its own feature cache, filled before the first trial."""
    return [str(p) for p in _values(space["pool"])] if "pool" in space else [base_pool]
