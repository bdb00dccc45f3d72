"""Run configuration: small dataclasses per component, resolved as defaults -> YAML -> CLI flags.

Every resolved option is written to ``config.yaml`` in the run folder and stored in each checkpoint, so a
run can be repeated and a checkpoint rebuilt without the command line that made it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import yaml

from seqvision.data.discovery import compile_group_pattern, is_manifest
from seqvision.data.packs import SHUFFLE_BUFFER, is_pack
from seqvision.data.sampling import SamplingPolicy
from seqvision.data.video_torchcodec import VIDEO_DECODER_CHOICES, resolve_video_decoder
from seqvision.errors import ConfigError
from seqvision.redact import redacted

if TYPE_CHECKING:
    from seqvision.models.sequence_model import SequenceModel

# The models (torch, torchvision) are imported where they are used, not here: the command line reads
# this module for its choices, and `seqvision --help` must not wait seconds for torch.


@dataclass
class DataConfig:
    data: str | None = None  # a data root (folders) or a manifest (.csv / .jsonl)
    task: str = "auto"  # auto | classification | regression: auto reads it from the labels
    targets: list[str] | None = None  # regression: manifest columns holding the numeric targets
    num_frames: int | None = None  # frames per clip (--num-frames; --max-images is an alias); uniform: at most this many
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
    # packed data (shards), training: each DataLoader worker draws its next sample at random from a window
    # of this many (WebDataset's shuffle buffer); larger mixes more, but its reads jump further within a
    # shard; 1 = the packing order within a shard (the shards themselves are still shuffled each epoch)
    shuffle_buffer: int = SHUFFLE_BUFFER
    cache: str = "auto"  # frozen backbone: auto (default cache folder) | off | a folder for the feature cache
    cache_dtype: str = "float32"  # float32 | float16 storage of cached features (half the disk, ~1e-3 error)
    # the frozen CNN that fills the feature cache: auto = bf16 where the hardware is fast at it (as
    # `seqvision extract` does, so its cache is found), else fp32; 32 = exactly the live fp32 features;
    # int8 = quantized on the first images (ONNX Runtime, CPU; ~1.7x fp32 for ResNet-18 on an AVX2 EPYC)
    feature_precision: str = "auto"
    # what runs the frozen CNN that fills the cache: auto = the fastest on this machine, measured once (ONNX
    # Runtime or OpenVINO where installed and faster, else torch; an existing cache keeps its runtime) |
    # torch | onnxruntime | openvino. The cache key names it: features of two runtimes never mix
    feature_runtime: str = "auto"
    # decode every pixel of large JPEGs and video frames; by default they are decoded at the smallest scale
    # the resize needs (libjpeg's DCT scaling, FFmpeg's scaler): features within a cosine of ~0.99+
    exact_decode: bool = False
    # what decodes video frames: auto | pyav | torchcodec. auto = PyAV (benchmarks/video_decoders.py: TorchCodec
    # 0.17 took more CPU per frame and missed frames of an MPEG-TS); the decoder is in the cache key
    video_decoder: str = "auto"
    # fine-tuning the last stages without augmentation: GB of disk the frozen stages' cached maps (float16)
    # may take; None = 90% of the free space. Over it, the CNN runs live every epoch (and says so)
    cache_budget: float | None = None

    def cache_root(self) -> Path:
        """The feature cache's root folder: ``cache`` when it names one, else the default one
        (``$SEQVISION_CACHE`` or ``~/.cache/seqvision/features``; also for ``off``). The inference runtimes
        keep their ONNX files and remembered choices in its ``.runtimes`` folder."""
        from seqvision.features.cache import default_cache_root  # torch: not at the command line's start

        return default_cache_root() if self.cache in ("auto", "off") else Path(self.cache)

    def sampling_policy(self, *, train: bool) -> SamplingPolicy:
        """The frame-sampling policy for training or for evaluation/prediction."""
        mode = self.sampling if train or not self.eval_sampling else self.eval_sampling
        return SamplingPolicy(mode=mode, num_frames=self.num_frames, stride=self.stride, fps=self.fps, clips=self.eval_clips)

    def augment_enabled(self, frozen: bool) -> bool:
        return (not frozen) if self.augment is None else self.augment


@dataclass
class ModelConfig:
    backbone: str = "resnet18"  # any torchvision classification model, or a seqvision-registered one
    weights: str = "imagenet"  # imagenet | none | path to a state_dict / checkpoint file
    pool: str = "avg"  # avg | max | grid2 (2x2 cells concatenated: keeps coarse layout, 4x the features)
    drop_stages: int = 0  # remove the backbone's last N stages: pool an earlier map (keeps small motions)
    freeze: bool = False  # frozen backbone: no gradients and BatchNorm statistics never move
    trainable_stages: int | None = None  # fine-tune only the last K stages of the backbone (others frozen)
    # BatchNorm in evaluation mode while the backbone learns; None: on for weights whose BatchNorm is folded
    freeze_bn: bool | None = None
    chunk_size: int | None = None  # images per backbone pass: bounds memory for long sequences
    checkpointing: bool = False  # activation checkpointing of each chunk while training (needs chunk_size)
    head: str = "lstm"  # lstm | gru | attention | transformer | mean | max (seqvision.models.temporal)
    temporal_diff: bool = False  # each step also gets x_t - x_{t-1} of the features (motion cue)
    # motion inside the CNN: off | bidirectional | causal (streamable) temporal shift in the learning stages
    temporal_shift: str = "off"
    hidden_size: int = 256  # lstm / gru / attention
    # lstm / gru / attention read each step through LayerNorm + Linear(F, hidden_size): raw CNN features
    # (non-negative, heavy-tailed, 1280-2048 wide) made the recurrent heads the slow learners of order tasks
    input_norm: bool = True
    # lstm / gru: first+last = the outputs at the first and the last image side by side (start vs end is one
    # linear read away: the weak spot of a one-way LSTM on order tasks); last = the final state alone
    readout: str = "first+last"
    num_layers: int = 1  # recurrent layers, or transformer encoder layers
    d_model: int = 256  # transformer width
    nhead: int = 4  # transformer attention heads
    bidirectional: bool = False
    lstm_dropout: float = 0.0  # between stacked recurrent layers (inside the transformer too)
    dropout: float = 0.2  # before the task head's Linear

    def build_model(self, num_outputs: int, *, weights: str | None = None, per_step: bool = False) -> "SequenceModel":
        """The :class:`SequenceModel` this config describes; ``weights`` overrides ``self.weights`` (``none``
        when a checkpoint will supply every parameter anyway, so nothing is downloaded)."""
        from seqvision.models.sequence_model import build_sequence_model

        options = dataclasses.asdict(self)
        if weights is not None:
            options["weights"] = weights
        return build_sequence_model(num_outputs, per_step=per_step, **options)


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
    monitor: str | None = None  # None = val_loss (train_loss without validation samples), for every task
    label_smoothing: float = 0.0
    class_weights: str | None = None  # None | balanced
    balanced_sampler: bool = False  # draw training samples with probability 1 / (count of their class)
    loss: str = "mse"  # regression: mse | l1
    accelerator: str = "auto"  # auto | cpu | gpu | cuda | mps (| tpu | hpu | xla, Lightning's)
    devices: str | int = "auto"  # auto, a count (-1: all), or a comma-separated list of device indices
    num_nodes: int = 1  # machines of a multi-node launch (torchrun --nnodes, SLURM --nodes): the same number
    deterministic: bool = False
    # BatchNorm statistics over every process's batch (distributed fine-tuning with small per-device batches)
    sync_batchnorm: bool = False
    on_nan: str = "stop"  # stop | skip: what a NaN/inf training loss does (skip: no update for that step)
    # GB the activations and inputs of the largest batch may take when the CNN runs live (None: half the
    # available RAM, or 90 % of the GPU's free memory); over it, chunking with checkpointing or a clear stop
    memory_budget: float | None = None
    # the evaluation at the end: the model on shuffled, reversed, single-image (and mirrored) samples;
    # auto = full (mirrored too: one more CNN pass) up to 2000 images in the split, else fast (no mirror)
    diagnostics: str = "auto"


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """The config as written down (config.yaml, checkpoints, trackers): a URL's password, query and
        fragment left out (a signed manifest URL is given again to read the data again)."""
        return redacted(dataclasses.asdict(self))

    def cnn_precision(self) -> str:
        """The precision the CNN computes in for this run (``32``, ``bf16`` or ``auto``), so that every
        evaluation of it sees the features training saw: bf16 with bf16 training; a frozen backbone on
        the feature cache, ``feature_precision``; otherwise fp32."""
        if self.train.precision.startswith("bf16"):
            return "bf16"
        if self.trains_on_cache():
            return self.data.feature_precision
        return "32"

    def cnn_runtime(self) -> str:
        """The inference runtime that evaluates this run's CNN: a frozen backbone on the feature cache,
        ``feature_runtime`` (the runtime of the features it trained on); otherwise torch, which computed
        what training saw (another runtime agrees only to rounding)."""
        return self.data.feature_runtime if self.trains_on_cache() else "torch"

    def trains_on_maps(self) -> bool:
        """Whether this run may train on the frozen stages' cached maps: only the last stages learn
        (``trainable_stages``), the cache is on, and no augmentation changes the pixels every epoch."""
        m = self.model
        return (not m.freeze and bool(m.trainable_stages) and self.data.cache != "off"
                and not self.data.augment_enabled(frozen=False))

    def trains_on_cache(self) -> bool:
        """Whether this run trains on cached features (a frozen backbone, the cache on, no augmentation
        changing the pixels every epoch) rather than running the CNN live: the one place this is decided."""
        return self.model.freeze and self.data.cache != "off" and not self.data.augment_enabled(frozen=True)

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
            key = _RENAMED.get((section, key), key)
            if key not in names:
                raise ConfigError(f"{source}: unknown option {section}.{key}; known: {', '.join(sorted(names))}")
            setattr(target, key, value)
    return cfg


def load_yaml_config(path: str | Path, *, what: str = "config file") -> dict[str, Any]:
    """``path``'s YAML (``{}`` when empty); a :class:`ConfigError` naming ``what`` and the file when it is
    missing or not valid YAML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None
    return raw


def resolve_config(yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """defaults -> YAML file -> explicit overrides (``{section: {key: value}}``, e.g. from CLI flags)."""
    cfg = RunConfig()
    if yaml_path is not None:
        apply_overrides(cfg, load_yaml_config(yaml_path), source=str(yaml_path))
    if overrides:
        apply_overrides(cfg, overrides, source="command line")
    validate(cfg, warn=False)  # errors now; options without effect are said once, when the run starts
    return cfg


# The choices of the options the CLI offers, here so that `seqvision --help` needs no torch; a test
# keeps them equal to the implementations' own (targets.TASKS, sampling.MODES, backbones.POOLS).
TASK_CHOICES = ("auto", "classification", "multilabel", "regression", "frame_classification", "frame_regression")
SAMPLING_CHOICES = ("uniform", "stride", "random", "segments")
POOL_CHOICES = ("avg", "max", "grid2")
DIAGNOSTICS_CHOICES = ("auto", "off", "fast", "full")
RUNTIME_CHOICES = ("auto", "torch", "onnxruntime", "openvino")  # features.runtimes.RUNTIMES


# Ranges of the numeric options: (section, field, test, what it must be). A None value means "not set".
_RANGES: list[tuple[str, str, Callable[[Any], bool], str]] = [
    ("data", "num_frames", lambda v: v >= 1, "at least 1"),
    ("data", "min_images", lambda v: v >= 1, "at least 1"),
    ("data", "stride", lambda v: v >= 1, "at least 1"),
    ("data", "fps", lambda v: v > 0, "positive"),
    ("data", "eval_clips", lambda v: v >= 1, "at least 1"),
    ("data", "image_size", lambda v: v >= 1, "at least 1 (pixels)"),
    ("data", "resize_size", lambda v: v >= 1, "at least 1 (pixels)"),
    ("data", "num_workers", lambda v: v >= 0, "0 or more"),
    ("data", "shuffle_buffer", lambda v: v >= 1, "at least 1 (1: packing order within a shard)"),
    ("data", "val_fraction", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("data", "test_fraction", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("model", "trainable_stages", lambda v: v >= 1, "at least 1"),
    ("model", "drop_stages", lambda v: v >= 0, "0 (the whole backbone) or more"),
    ("model", "chunk_size", lambda v: v >= 1, "at least 1"),
    ("model", "hidden_size", lambda v: v >= 1, "at least 1"),
    ("model", "num_layers", lambda v: v >= 1, "at least 1"),
    ("model", "d_model", lambda v: v >= 1, "at least 1"),
    ("model", "nhead", lambda v: v >= 1, "at least 1"),
    ("model", "lstm_dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("model", "dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("train", "max_epochs", lambda v: v >= 1, "at least 1"),
    ("train", "batch_size", lambda v: v >= 1, "at least 1"),
    ("train", "lr", lambda v: v >= 0, "0 or more"),
    ("train", "backbone_lr", lambda v: v >= 0, "0 or more"),
    ("train", "weight_decay", lambda v: v >= 0, "0 or more"),
    ("train", "warmup_fraction", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("train", "grad_clip", lambda v: v >= 0, "0 (off) or more"),
    ("train", "label_smoothing", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("train", "patience", lambda v: v >= 0, "0 (off) or more"),
    ("train", "memory_budget", lambda v: v > 0, "positive (GB)"),
    ("train", "num_nodes", lambda v: v >= 1, "at least 1"),
    ("data", "cache_budget", lambda v: v > 0, "positive (GB)"),
]
_FLAG_NAMES: dict[str, str] = {}  # fields whose flag has another name
# option names of earlier versions, still read from YAML files and checkpoints: (section, old) -> new
_RENAMED = {("data", "max_images"): "num_frames"}

# Options added after checkpoints were written, with the value that rebuilds the model those checkpoints hold
# (their config lacks the key; today's default would build another model)
_BEFORE_ADDED = {("model", "input_norm"): False, ("model", "readout"): "last"}


def legacy_options(raw: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's saved config with every later-added option it lacks set to the value that rebuilds
    the model it was trained as (a copy; ``raw`` itself is not changed)."""
    if not isinstance(raw, dict):
        return raw
    out = {section: dict(values) if isinstance(values, dict) else values for section, values in raw.items()}
    for (section, key), value in _BEFORE_ADDED.items():
        if isinstance(out.get(section), dict):
            out[section].setdefault(key, value)
    return out


def keep_legacy_options(cfg: RunConfig, saved: dict[str, Any]) -> list[str]:
    """A run resumed from a checkpoint whose saved config ``saved`` predates an option keeps the value that
    rebuilds its model (``cfg`` is changed in place); returns the flags that changed, for one line."""
    changed = []
    for (section, key), value in _BEFORE_ADDED.items():
        if isinstance(saved.get(section), dict) and key not in saved[section] and getattr(getattr(cfg, section), key) != value:
            setattr(getattr(cfg, section), key, value)
            changed.append(f"{flag(key)} {value}" if not isinstance(value, bool) else f"--{'' if value else 'no-'}{key.replace('_', '-')}")
    return changed


def flag(key: str) -> str:
    """The command-line flag of a config field: ``batch_size`` -> ``--batch-size``."""
    return "--" + _FLAG_NAMES.get(key, key.replace("_", "-"))


def validate(cfg: RunConfig, *, warn: bool = True) -> None:
    """Reject option values that cannot work, before any work starts: each value's type (a YAML file
    can hold anything), its range and its choices, naming the option; with ``warn``, say which options
    are valid but have no effect with the others."""
    _check_types(cfg)
    choices = {
        ("data", "task"): TASK_CHOICES,
        ("data", "short_samples"): ("error", "drop"),
        ("data", "on_bad_image"): ("error", "skip"),
        ("data", "cache_dtype"): ("float32", "float16"),
        ("data", "feature_precision"): ("auto", "32", "bf16", "int8"),
        ("data", "feature_runtime"): RUNTIME_CHOICES,
        ("data", "video_decoder"): VIDEO_DECODER_CHOICES,
        ("model", "pool"): POOL_CHOICES,
        ("model", "head"): tuple(_heads()),
        ("model", "temporal_shift"): ("off", "bidirectional", "causal"),
        ("model", "readout"): ("first+last", "last"),
        ("train", "precision"): ("32", "bf16-mixed", "16-mixed", "64"),
        ("train", "loss"): ("mse", "l1"),
        ("train", "class_weights"): (None, "balanced"),
        ("train", "on_nan"): ("stop", "skip"),
        ("train", "accelerator"): ACCELERATOR_CHOICES,
        ("train", "diagnostics"): DIAGNOSTICS_CHOICES,
    }
    for (section, key), allowed in choices.items():
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise ConfigError(f"{flag(key)} {value!r} ({section}.{key}) is not one of {', '.join(map(str, allowed))}")
    for section, key, ok, requirement in _RANGES:
        value = getattr(getattr(cfg, section), key)
        if value is not None and not ok(value):
            raise ConfigError(f"{flag(key)} {value!r} ({section}.{key}) must be {requirement}")
    d, m = cfg.data, cfg.model
    d.sampling_policy(train=True), d.sampling_policy(train=False)  # raises for bad sampling options
    if d.num_frames is not None and d.min_images > d.num_frames:
        raise ConfigError(f"--min-images {d.min_images} is larger than --num-frames {d.num_frames}")
    if d.image_size is not None and d.resize_size is not None and d.resize_size < d.image_size:
        raise ConfigError(f"--resize-size {d.resize_size} is smaller than --image-size {d.image_size}: the centre crop would pad with black")
    for name in ("mean", "std"):
        value = getattr(d, name)
        if value is not None and len(value) != 3:
            raise ConfigError(f"--{name} needs 3 values (R G B), got {value}")
    if d.std is not None and any(s <= 0 for s in d.std):
        raise ConfigError("--std values must be positive")
    if d.group_by is not None and not is_manifest(d.data):  # a folder: a regex on the sample names
        compile_group_pattern(d.group_by)
    if d.targets is not None and d.data is not None and not is_manifest(d.data):
        raise ConfigError(f"--targets {','.join(d.targets)} names manifest columns, but --data {d.data} is a folder (labels come from its folder names)")
    if d.val_fraction + d.test_fraction >= 1:
        raise ConfigError("--val-fraction and --test-fraction must sum to less than 1 (training needs samples)")
    if m.checkpointing and not m.chunk_size:
        raise ConfigError("--checkpointing needs --chunk-size N (images per checkpointed backbone pass)")
    if m.freeze and m.trainable_stages:
        raise ConfigError("--freeze and --trainable-stages contradict each other; choose one")
    if m.temporal_shift != "off":
        if m.freeze:
            raise ConfigError(f"--temporal-shift {m.temporal_shift} shifts the stages that learn: not with --freeze "
                              "(use --trainable-stages K, or --temporal-shift off)")
        from seqvision.models.temporal_shift import supports_shift

        if not supports_shift(m.backbone):
            raise ConfigError(f"--temporal-shift {m.temporal_shift}: backbone {m.backbone!r} is not supported (the "
                              "ResNet family, mobilenet_v2 and tiny_cnn are); use one of them or --temporal-shift off")
    if m.head == "transformer" and m.d_model % m.nhead:
        raise ConfigError(f"--d-model {m.d_model} must be a multiple of --nhead {m.nhead} (each head gets d_model / nhead)")
    _check_devices(cfg.train)
    _check_feature_runtime(cfg)
    if d.video_decoder == "torchcodec":  # asked for by name: one line now if it cannot load, not mid-epoch
        resolve_video_decoder(d.video_decoder)
    if warn:
        _warn_no_effect(cfg)


ACCELERATOR_CHOICES = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu", "xla")  # Lightning's


def _check_types(cfg: RunConfig) -> None:
    """Each value of the type its field declares (an int where a float is asked is fine)."""
    for section, klass in _SECTIONS.items():
        hints = typing.get_type_hints(klass)
        values = getattr(cfg, section)
        for f in dataclasses.fields(klass):
            value = getattr(values, f.name)
            if not _fits(value, hints[f.name]):
                raise ConfigError(
                    f"{section}.{f.name} = {value!r} ({type(value).__name__}) must be {_describe(hints[f.name])}"
                    f" (config file or {flag(f.name)})"
                )


def _fits(value: Any, kind: Any) -> bool:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if kind is type(None):
        return value is None
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _describe(kind: Any) -> str:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is list:
        return "a list of " + {float: "numbers", int: "whole numbers", str: "names"}.get(args[0], str(args[0]))
    names = {type(None): "empty (null)", float: "a number", int: "a whole number", bool: "true or false", str: "text"}
    return names.get(kind, getattr(kind, "__name__", str(kind)))


def _check_devices(train: "TrainConfig") -> None:
    """``--devices`` is a count or a list that Lightning can use, and a GPU accelerator has a GPU."""
    devices = train.devices
    if isinstance(devices, list):  # YAML: a list of device indices
        indices = devices
    elif str(devices).strip() == "auto":
        indices = None
    else:
        text = str(devices).strip()
        try:
            numbers = [int(p) for p in text.rstrip(",").split(",")]
        except ValueError:
            raise ConfigError(f"--devices {devices!r}: give auto, a count (-1: all) or indices like 0,1 (or 0, for GPU 0)") from None
        is_count = len(numbers) == 1 and not text.endswith(",")  # "2": two devices; "0,": device 0
        if is_count and (numbers[0] == 0 or numbers[0] < -1):
            raise ConfigError(f"--devices {devices!r}: give auto, a count of at least 1 (-1: all) or indices like 0,1")
        indices = None if is_count else numbers
    if indices is not None and (not indices or min(indices) < 0):
        raise ConfigError(f"--devices {devices!r}: device indices are 0 or more")
    if train.accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"--accelerator {train.accelerator}: no CUDA GPU is available here; use --accelerator cpu (or auto)")
    if train.accelerator == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise ConfigError("--accelerator mps: Apple's MPS is not available here; use --accelerator cpu (or auto)")


def _check_feature_runtime(cfg: RunConfig) -> None:
    """An explicit ``--feature-runtime`` other than torch is installed and meets an fp32 CNN (the others
    compute in fp32 only); int8 has ONNX Runtime (installed) or auto; the device is checked where it is
    known (features.runtimes.check_runtime)."""
    runtime = cfg.data.feature_runtime
    if not cfg.model.freeze:
        return
    from seqvision.features.runtimes import PACKAGE, installed

    if cfg.cnn_precision() == "int8":  # ONNX Runtime's alone (features.runtimes.check_int8)
        if runtime not in ("auto", "onnxruntime"):
            raise ConfigError(f"--feature-precision int8 is run by ONNX Runtime only, not by --feature-runtime {runtime}; "
                              "use --feature-runtime onnxruntime or auto")
        if not installed("onnxruntime"):
            raise ConfigError("--feature-precision int8 needs ONNX Runtime, which is not installed; pip install onnxruntime "
                              "(or use --feature-precision 32)")
        return
    if runtime in ("auto", "torch"):
        return

    if not installed(runtime):
        raise ConfigError(f"--feature-runtime {runtime}: {runtime} is not installed; pip install {PACKAGE[runtime]} (or use auto)")
    if cfg.cnn_precision() == "bf16":
        raise ConfigError(f"--feature-runtime {runtime} computes in float32 only: pass --feature-precision 32 "
                          "(and no bf16 training precision), or use --feature-runtime torch or auto")


def _warn_no_effect(cfg: RunConfig) -> None:
    """Valid options that do nothing with the others, so a user does not believe they act."""
    d, m = cfg.data, cfg.model
    if m.lstm_dropout > 0 and m.num_layers == 1 and m.head in ("lstm", "gru", "attention"):
        warnings.warn(f"--lstm-dropout {m.lstm_dropout} has no effect with --num-layers 1 (it acts between stacked layers)")
    if d.eval_clips > 1 and (d.eval_sampling or d.sampling) != "random":
        warnings.warn(f"--eval-clips {d.eval_clips} has no effect with --sampling {d.eval_sampling or d.sampling} (only random sampling averages clips)")
    if (d.stride != 1 or d.fps is not None) and "stride" not in (d.sampling, d.eval_sampling):
        warnings.warn(f"--stride/--fps have no effect with --sampling {d.sampling} (they are for --sampling stride)")
    from seqvision.models.temporal import head_options

    defaults, taken = ModelConfig(), set(head_options(m.head))
    for name, option in _HEAD_FIELDS.items():  # a head option the chosen head does not take, set by the user
        if getattr(m, name) != getattr(defaults, name) and option not in taken:
            warnings.warn(f"{flag(name)} has no effect with --head {m.head} (it takes: {', '.join(sorted(taken)) or 'no options'})")
    if m.freeze and m.freeze_bn is not None:
        warnings.warn("--freeze-bn has no effect with --freeze (a frozen backbone's BatchNorm never trains)")
    if m.freeze and cfg.train.backbone_lr != TrainConfig().backbone_lr:
        warnings.warn("--backbone-lr has no effect with --freeze (the backbone does not learn)")
    if not m.freeze and (d.feature_precision != "auto" or d.cache_dtype != "float32" or d.feature_runtime != "auto"):
        warnings.warn("--cache-dtype, --feature-precision and --feature-runtime have no effect without --freeze (only a frozen "
                      "backbone's features are cached)")
    if d.shuffle_buffer != SHUFFLE_BUFFER and (cfg.train.balanced_sampler or (d.data is not None and not is_pack(d.data))):
        warnings.warn(f"--shuffle-buffer {d.shuffle_buffer} has no effect: it orders the samples of packed data (a folder "
                      "written by seqvision pack) without --balanced-sampler; other data is shuffled whole")
    if not m.freeze and not m.trainable_stages and d.cache != "auto":
        warnings.warn("--cache has no effect without --freeze or --trainable-stages (nothing of a learning backbone is cached)")


# config field -> the temporal-head option it feeds (see models.sequence_model.build_sequence_model)
_HEAD_FIELDS = {"hidden_size": "hidden_size", "num_layers": "num_layers", "bidirectional": "bidirectional",
                "lstm_dropout": "dropout", "d_model": "d_model", "nhead": "nhead", "input_norm": "input_norm",
                "readout": "readout"}


def _heads() -> list[str]:
    from seqvision.models.temporal import available_heads

    return available_heads()


def save_config(cfg: RunConfig, path: str | Path) -> None:
    from seqvision.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
