"""Run configuration: small dataclasses per component, resolved as defaults -> YAML -> CLI flags.

Every resolved option is written to ``config.yaml`` in the run folder and stored in each checkpoint, so a
run can be repeated and a checkpoint rebuilt without the command line that made it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from seqvision.errors import ConfigError

if TYPE_CHECKING:
    from seqvision.data.sampling import SamplingPolicy


@dataclass
class DataConfig:
    data: str | None = None  # a data root (folders) or a manifest (.csv / .jsonl)
    task: str = "auto"  # auto | classification | regression: auto reads it from the labels
    targets: list[str] | None = None  # regression: manifest columns holding the numeric targets
    max_images: int | None = None  # frames per clip (--num-frames / --max-images); uniform: at most this many
    sampling: str = "uniform"  # uniform | stride | random | segments (see seqvision.data.sampling)
    eval_sampling: str | None = None  # evaluation/prediction policy; None = the training one
    stride: int = 1  # stride sampling: every k-th frame
    fps: float | None = None  # stride sampling of videos: frames per second (overrides stride)
    eval_clips: int = 1  # random sampling at evaluation: clips per sample, predictions averaged
    min_images: int = 1  # shorter samples are an error, or dropped (and reported) with short_samples=drop
    short_samples: str = "error"  # error | drop
    on_bad_image: str = "error"  # error | skip: skip leaves bad images out and reports them at the end
    # which samples share a source (video, object, subject, session), so they never straddle a split: a
    # manifest column (default: 'group' when present) or, for a folder, a regex on the sample names
    group_by: str | None = None
    val_fraction: float = 0.15  # used only when the data has no val split of its own
    test_fraction: float = 0.15  # used only when the data has no test split of its own
    image_size: int | None = None  # crop size; None = the backbone's pretrained configuration
    resize_size: int | None = None  # shorter side before the centre crop; None = image_size * 256/224
    mean: list[float] | None = None  # None = the backbone's pretrained normalization
    std: list[float] | None = None
    augment: bool | None = None  # random resized crop + colour jitter (+ flip with hflip), ONE draw per
    # sample; None = on when the backbone learns, off when it is frozen (so training reads the feature cache)
    # Off by default: a mirror reverses motion (left <-> right, clockwise <-> anticlockwise), so it swaps
    # the labels of direction tasks. Turn on only when a mirrored sample keeps its label.
    hflip: bool = False
    shuffle_frames: bool = False  # control experiment: shuffle the images of every sample (order lost)
    num_workers: int | None = None  # DataLoader workers; None = one per spare core (at most 4)
    cache: str = "auto"  # frozen backbone: auto (default cache folder) | off | a folder for the feature cache
    cache_dtype: str = "float32"  # float32 | float16 storage of cached features (half the disk, ~1e-3 error)
    # the frozen CNN that fills the feature cache: auto = bf16 where the hardware is fast at it (as
    # `seqvision extract` does, so its cache is found), else fp32; 32 = exactly the live fp32 features
    feature_precision: str = "auto"

    def sampling_policy(self, *, train: bool) -> "SamplingPolicy":
        """The frame-sampling policy for training or for evaluation/prediction."""
        from seqvision.data.sampling import SamplingPolicy

        mode = self.sampling if train or not self.eval_sampling else self.eval_sampling
        return SamplingPolicy(mode=mode, num_frames=self.max_images, stride=self.stride, fps=self.fps, clips=self.eval_clips)

    def augment_enabled(self, frozen: bool) -> bool:
        return (not frozen) if self.augment is None else self.augment


@dataclass
class ModelConfig:
    backbone: str = "resnet18"  # any torchvision classification model, or a seqvision-registered one
    weights: str = "imagenet"  # imagenet | none | path to a state_dict / checkpoint file
    pool: str = "avg"  # avg | max | grid2 (2x2 cells concatenated: keeps coarse layout, 4x the features)
    freeze: bool = False  # frozen backbone: no gradients and BatchNorm statistics never move
    trainable_stages: int | None = None  # fine-tune only the last K stages of the backbone (others frozen)
    chunk_size: int | None = None  # images per backbone pass: bounds memory for long sequences
    checkpointing: bool = False  # activation checkpointing of each chunk while training (needs chunk_size)
    head: str = "lstm"  # lstm | gru | attention | transformer | mean | max (seqvision.models.temporal)
    temporal_diff: bool = False  # each step also gets x_t - x_{t-1} of the features (motion cue)
    hidden_size: int = 256  # lstm / gru / attention
    num_layers: int = 1  # recurrent layers, or transformer encoder layers
    d_model: int = 256  # transformer width
    nhead: int = 4  # transformer attention heads
    bidirectional: bool = False
    lstm_dropout: float = 0.0  # between stacked recurrent layers (inside the transformer too)
    dropout: float = 0.2  # before the task head's Linear


@dataclass
class TrainConfig:
    max_epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3  # temporal and task heads
    backbone_lr: float = 1e-4  # a smaller rate for a fine-tuned backbone
    weight_decay: float = 1e-2
    warmup_fraction: float = 0.05  # of all optimizer steps, linear warm-up before the cosine decay
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    precision: str = "32"  # 32 | bf16-mixed | 16-mixed (GPU)
    seed: int = 42
    patience: int = 5  # early stopping on the monitored validation metric; 0 disables
    monitor: str | None = None  # None = val_acc for classification, val_loss for regression
    label_smoothing: float = 0.0
    class_weights: str | None = None  # None | balanced
    balanced_sampler: bool = False  # draw training samples with probability 1 / (count of their class)
    loss: str = "mse"  # regression: mse | l1
    accelerator: str = "auto"
    devices: str = "auto"
    deterministic: bool = False
    on_nan: str = "stop"  # stop | skip: what a NaN/inf training loss does (skip: no update for that step)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def cnn_precision(self) -> str:
        """The precision the CNN computes in for this run (``32``, ``bf16`` or ``auto``), so that every
        evaluation of it sees the features training saw: bf16 with bf16 training; a frozen backbone on
        the feature cache, ``feature_precision``; otherwise fp32."""
        if self.train.precision.startswith("bf16"):
            return "bf16"
        if self.model.freeze and self.data.cache != "off" and not self.data.augment_enabled(frozen=True):
            return self.data.feature_precision
        return "32"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "RunConfig":
        """Build from a nested dict (YAML or checkpoint); unknown sections or keys are an error."""
        cfg = cls()
        apply_overrides(cfg, raw, source="config")
        return cfg


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def apply_overrides(cfg: RunConfig, raw: dict[str, Any], *, source: str) -> RunConfig:
    """Overwrite ``cfg`` in place with a nested ``{section: {key: value}}`` dict."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections (data, model, train), got {type(raw).__name__}")
    for section, values in raw.items():
        if section not in _SECTIONS:
            raise ConfigError(f"{source}: unknown section {section!r}; use one of {sorted(_SECTIONS)}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {section!r} must be a mapping")
        target = getattr(cfg, section)
        names = {f.name for f in dataclasses.fields(target)}
        for key, value in values.items():
            if key not in names:
                raise ConfigError(f"{source}: unknown option {section}.{key}; known: {', '.join(sorted(names))}")
            setattr(target, key, value)
    return cfg


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    return raw


def resolve_config(yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """defaults -> YAML file -> explicit overrides (``{section: {key: value}}``, e.g. from CLI flags)."""
    cfg = RunConfig()
    if yaml_path is not None:
        apply_overrides(cfg, load_yaml_config(yaml_path), source=str(yaml_path))
    if overrides:
        apply_overrides(cfg, overrides, source="command line")
    validate(cfg)
    return cfg


# The choices of the options the CLI offers, here so that `seqvision --help` needs no torch; a test
# keeps them equal to the implementations' own (targets.TASKS, sampling.MODES, backbones.POOLS).
TASK_CHOICES = ("auto", "classification", "multilabel", "regression", "frame_classification", "frame_regression")
SAMPLING_CHOICES = ("uniform", "stride", "random", "segments")
POOL_CHOICES = ("avg", "max", "grid2")


def validate(cfg: RunConfig) -> None:
    """Reject option values that cannot work, naming the option and the choices."""
    choices = {
        ("data", "task"): TASK_CHOICES,
        ("data", "short_samples"): ("error", "drop"),
        ("data", "on_bad_image"): ("error", "skip"),
        ("data", "cache_dtype"): ("float32", "float16"),
        ("data", "feature_precision"): ("auto", "32", "bf16"),
        ("model", "pool"): POOL_CHOICES,
        ("model", "head"): tuple(_heads()),
        ("train", "precision"): ("32", "bf16-mixed", "16-mixed", "64"),
        ("train", "loss"): ("mse", "l1"),
        ("train", "class_weights"): (None, "balanced"),
        ("train", "on_nan"): ("stop", "skip"),
    }
    for (section, key), allowed in choices.items():
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise ConfigError(f"{section}.{key}={value!r} is not one of {', '.join(map(str, allowed))}")
    d = cfg.data
    d.sampling_policy(train=True), d.sampling_policy(train=False)  # raises for bad sampling options
    if d.max_images is not None and d.max_images < 1:
        raise ConfigError("--max-images must be at least 1")
    if d.min_images < 1:
        raise ConfigError("--min-images must be at least 1")
    if d.max_images is not None and d.min_images > d.max_images:
        raise ConfigError(f"--min-images {d.min_images} is larger than --max-images {d.max_images}")
    for name in ("mean", "std"):
        value = getattr(d, name)
        if value is not None and len(value) != 3:
            raise ConfigError(f"--{name} needs 3 values (R G B), got {value}")
    if d.std is not None and any(s <= 0 for s in d.std):
        raise ConfigError("--std values must be positive")
    if d.group_by is not None:
        from seqvision.data.discovery import compile_group_pattern, is_manifest

        if not is_manifest(d.data):  # a folder: a regex on the sample names
            compile_group_pattern(d.group_by)
    if not 0 <= d.val_fraction < 1 or not 0 <= d.test_fraction < 1 or d.val_fraction + d.test_fraction >= 1:
        raise ConfigError("val/test fractions must be in [0, 1) and sum to less than 1")
    if cfg.model.checkpointing and not cfg.model.chunk_size:
        raise ConfigError("--checkpointing needs --chunk-size N (images per checkpointed backbone pass)")
    if cfg.model.chunk_size is not None and cfg.model.chunk_size < 1:
        raise ConfigError("--chunk-size must be at least 1")
    if cfg.model.freeze and cfg.model.trainable_stages:
        raise ConfigError("--freeze and --trainable-stages contradict each other; choose one")
    if cfg.train.batch_size < 1 or cfg.train.max_epochs < 1:
        raise ConfigError("--batch-size and --max-epochs must be at least 1")


def _heads() -> list[str]:
    from seqvision.models.temporal import available_heads

    return available_heads()


def save_config(cfg: RunConfig, path: str | Path) -> None:
    from seqvision.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
