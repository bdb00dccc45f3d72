"""The ``seqvision`` command: thin subcommands that parse, build a config and call the library.

Heavy modules (torch, Lightning) are imported inside the commands, so ``seqvision --help`` is instant.
Our own errors print as one line and exit with status 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from seqvision.config import DIAGNOSTICS_CHOICES, POOL_CHOICES, RUNTIME_CHOICES, SAMPLING_CHOICES, TASK_CHOICES, VIDEO_DECODER_CHOICES
from seqvision.errors import SeqVisionError

VIDEO_DECODER_HELP = ("what decodes video frames: auto (PyAV: faster on the CPU in benchmarks/video_decoders.py) | pyav | "
                      "torchcodec (pip install 'seqvision[torchcodec]'); the decoder is part of the feature-cache key")
# flag -> (config section, field, argparse options). Defaults are None so only given flags override.
_TRAIN_FLAGS: list[tuple] = [  # (flag[, alias], section, field, argparse options)
    ("--data", "data", "data", {"help": "data root (ROOT/<label>/<sample>/<images>) or a .csv/.jsonl manifest"}),
    ("--task", "data", "task", {"choices": TASK_CHOICES, "help": "auto reads it from the labels"}),
    ("--targets", "data", "targets", {"type": lambda s: s.split(","), "help": "regression target columns, comma-separated"}),
    ("--num-frames", "--max-images", "data", "num_frames", {"type": int, "help": "frames per clip (uniform: at most N)"}),
    ("--sampling", "data", "sampling", {"choices": SAMPLING_CHOICES, "help": "which frames a clip takes (see README: Videos and frame sampling)"}),
    ("--eval-sampling", "data", "eval_sampling", {"choices": SAMPLING_CHOICES, "help": "sampling for evaluation and prediction (default: --sampling)"}),
    ("--stride", "data", "stride", {"type": int, "help": "stride sampling: every k-th frame"}),
    ("--fps", "data", "fps", {"type": float, "help": "stride sampling of videos: target frames per second"}),
    ("--eval-clips", "data", "eval_clips", {"type": int, "help": "random sampling: clips averaged at evaluation"}),
    ("--min-images", "data", "min_images", {"type": int, "help": "fewest images a sample may have"}),
    ("--short-samples", "data", "short_samples", {"choices": ["error", "drop"], "help": "what to do with samples under --min-images"}),
    ("--on-bad-image", "data", "on_bad_image", {"choices": ["error", "skip"], "help": "stop at a bad image, or leave it out and report it"}),
    ("--group-by", "data", "group_by", {"help": "what names each sample's source (video, object, subject), so a source never straddles a split: a manifest column (default: 'group' when present) or, for a folder, a regex on the sample names whose first match is the group (e.g. '^[a-z]+\\d+')"}),
    ("--val-fraction", "data", "val_fraction", {"type": float, "help": "share of samples (by group) held out for validation, when the data has no val split"}),
    ("--test-fraction", "data", "test_fraction", {"type": float, "help": "share of samples (by group) held out for the test, when the data has no test split"}),
    ("--image-size", "data", "image_size", {"type": int, "help": "crop size fed to the CNN (default: the backbone's)"}),
    ("--resize-size", "data", "resize_size", {"type": int, "help": "shorter side before the centre crop (default: keeps the backbone's ratio)"}),
    ("--mean", "data", "mean", {"type": float, "nargs": 3, "help": "normalization mean R G B (default: the weights')"}),
    ("--std", "data", "std", {"type": float, "nargs": 3, "help": "normalization std R G B (default: the weights')"}),
    ("--augment", "data", "augment", {"action": argparse.BooleanOptionalAction, "help": "random resized crop + colour jitter, one draw per sample (default: on when the backbone learns, off when frozen)"}),
    ("--hflip", "data", "hflip", {"action": argparse.BooleanOptionalAction, "help": "random horizontal flip in augmentation (default off: a mirror reverses motion; turn on only when a mirrored sample keeps its label)"}),
    ("--shuffle-frames", "data", "shuffle_frames", {"action": argparse.BooleanOptionalAction, "help": "control: shuffle each sample's images"}),
    ("--num-workers", "data", "num_workers", {"type": int, "help": "DataLoader worker processes (default: one per spare core, at most 4)"}),
    ("--shuffle-buffer", "data", "shuffle_buffer", {"type": int, "help": "packed data: samples each loader worker draws its next one from at random (1: packing order within a shard; shards are shuffled either way)"}),
    ("--cache", "--cache-dir", "data", "cache", {"help": "frozen backbone: auto | off | a feature-cache folder (--cache-dir, as for extract and cache)"}),
    ("--cache-dtype", "data", "cache_dtype", {"choices": ["float32", "float16"], "help": "storage of cached features (float16: half the disk)"}),
    ("--feature-precision", "data", "feature_precision", {"choices": ["auto", "32", "bf16", "int8"], "help": "frozen CNN filling the cache: auto = bf16 where fast; int8 = quantized on the first CNN batch's images (up to 64), by ONNX Runtime on the CPU"}),
    ("--feature-runtime", "data", "feature_runtime", {"choices": RUNTIME_CHOICES, "help": "what runs the frozen CNN filling the cache: auto = the fastest on this machine (measured once; a cache already filled keeps its runtime) | torch | onnxruntime | openvino (CPU, fp32)"}),
    ("--exact-decode", "data", "exact_decode", {"action": argparse.BooleanOptionalAction, "help": "decode every pixel of large JPEGs and video frames (default: only the scale the resize needs)"}),
    ("--video-decoder", "data", "video_decoder", {"choices": VIDEO_DECODER_CHOICES, "help": VIDEO_DECODER_HELP}),
    ("--cache-budget", "data", "cache_budget", {"type": float, "help": "--trainable-stages with --no-augment: GB of disk for the frozen stages' cached maps (default: 90%% of the free space; over it, the CNN runs live)"}),
    ("--backbone", "model", "backbone", {"help": "tiny_cnn, a torchvision classifier or timm/NAME (seqvision backbones lists them)"}),
    ("--weights", "model", "weights", {"help": "imagenet | none | PATH to a state_dict"}),
    ("--pool", "model", "pool", {"choices": POOL_CHOICES, "help": "grid2: 2x2 cells, keeps coarse layout"}),
    ("--freeze", "model", "freeze", {"action": argparse.BooleanOptionalAction, "help": "frozen backbone (BatchNorm too)"}),
    ("--freeze-bn", "model", "freeze_bn", {"action": argparse.BooleanOptionalAction, "help": "fine-tuning: BatchNorm keeps its running statistics (evaluation mode) while the backbone learns (default: on for weights whose BatchNorm is folded, as converted TFLite weights)"}),
    ("--trainable-stages", "model", "trainable_stages", {"type": int, "help": "fine-tune only the last K backbone stages"}),
    ("--drop-stages", "model", "drop_stages", {"type": int, "help": "remove the backbone's last N stages and pool an "
     "earlier map: its small motions survive (with --temporal-shift, for order that lives in motion)"}),
    ("--chunk-size", "model", "chunk_size", {"type": int, "help": "images per backbone pass (bounds memory)"}),
    ("--checkpointing", "model", "checkpointing", {"action": argparse.BooleanOptionalAction, "help": "activation checkpointing per chunk"}),
    ("--head", "model", "head", {"help": "lstm | gru | attention | transformer | mean | max"}),
    ("--temporal-diff", "model", "temporal_diff", {"action": argparse.BooleanOptionalAction, "help": "also feed x_t - x_{t-1}"}),
    ("--temporal-shift", "model", "temporal_shift", {"choices": ["off", "bidirectional", "causal"],
     "help": "motion inside the CNN: shift 1/8 of the channels of each residual block of the learning stages one frame "
             "(causal: from the past only, streamable); needs a backbone that learns"}),
    ("--d-model", "model", "d_model", {"type": int, "help": "transformer width"}),
    ("--nhead", "model", "nhead", {"type": int, "help": "transformer attention heads"}),
    ("--hidden-size", "model", "hidden_size", {"type": int, "help": "LSTM/GRU/attention hidden units"}),
    ("--readout", "model", "readout", {"choices": ["first+last", "last"], "help": "LSTM/GRU: what the task head reads: the outputs at the first and the last image (first+last) or the final state alone (last)"}),
    ("--input-norm", "model", "input_norm", {"action": argparse.BooleanOptionalAction, "help": "LSTM/GRU/attention: LayerNorm + Linear to the hidden size on each step's features before the recurrence"}),
    ("--num-layers", "model", "num_layers", {"type": int, "help": "stacked recurrent (or transformer) layers"}),
    ("--bidirectional", "model", "bidirectional", {"action": argparse.BooleanOptionalAction, "help": "read each sample both ways (LSTM/GRU/attention)"}),
    ("--lstm-dropout", "model", "lstm_dropout", {"type": float, "help": "dropout between stacked layers (needs --num-layers 2+)"}),
    ("--dropout", "model", "dropout", {"type": float, "help": "dropout before the task head"}),
    ("--max-epochs", "train", "max_epochs", {"type": int, "help": "most epochs (early stopping may end sooner)"}),
    ("--batch-size", "train", "batch_size", {"type": int, "help": "samples per step"}),
    ("--lr", "train", "lr", {"type": float, "help": "learning rate of the temporal and task heads"}),
    ("--backbone-lr", "train", "backbone_lr", {"type": float, "help": "learning rate of a fine-tuned backbone"}),
    ("--weight-decay", "train", "weight_decay", {"type": float, "help": "AdamW weight decay"}),
    ("--warmup-fraction", "train", "warmup_fraction", {"type": float, "help": "share of steps of linear warm-up before the cosine decay"}),
    ("--grad-clip", "train", "grad_clip", {"type": float, "help": "max gradient norm (0: off)"}),
    ("--precision", "train", "precision", {"choices": ["32", "bf16-mixed", "16-mixed", "64"], "help": "training precision (16-mixed: CUDA GPUs)"}),
    ("--seed", "train", "seed", {"type": int, "help": "seeds the split, the initialization and the data order"}),
    ("--patience", "train", "patience", {"type": int, "help": "early-stopping patience in epochs (0: off)"}),
    ("--monitor", "train", "monitor", {"help": "val_loss | val_acc | val_f1 | val_mae | val_rmse"}),
    ("--label-smoothing", "train", "label_smoothing", {"type": float, "help": "classification: cross-entropy label smoothing"}),
    ("--class-weights", "train", "class_weights", {"choices": ["balanced"], "help": "weigh classes by N / (C x n_c) of the training split"}),
    ("--balanced-sampler", "train", "balanced_sampler", {"action": argparse.BooleanOptionalAction, "help": "draw samples with probability 1 / their class count"}),
    ("--loss", "train", "loss", {"choices": ["mse", "l1"], "help": "regression loss"}),
    ("--accelerator", "train", "accelerator", {"help": "auto | cpu | gpu | cuda | mps"}),
    ("--devices", "train", "devices", {"help": "auto, a count (-1: all) or indices like 0,1"}),
    ("--deterministic", "train", "deterministic", {"action": argparse.BooleanOptionalAction, "help": "deterministic algorithms (with --seed: repeatable runs)"}),
    ("--sync-batchnorm", "train", "sync_batchnorm", {"action": argparse.BooleanOptionalAction, "help": "several processes: BatchNorm statistics over all their batches (fine-tuning with small per-device batches)"}),
    ("--num-nodes", "train", "num_nodes", {"type": int, "help": "machines of a multi-node launch (torchrun --nnodes M, SLURM --nodes M)"}),
    ("--diagnostics", "train", "diagnostics", {"choices": DIAGNOSTICS_CHOICES, "help": "evaluation on shuffled, reversed, one-image (full: and mirrored) samples; auto: full up to 2000 images in the split, else fast"}),
    ("--memory-budget", "train", "memory_budget", {"type": float, "help": "GB the largest batch may take when the CNN runs live; over it, chunking with checkpointing turns on or training stops before it starts (default: half the free RAM, or 90%% of the GPU's free memory)"}),
    ("--on-nan", "train", "on_nan", {"choices": ["stop", "skip"], "help": "a NaN/inf loss stops training (default) or skips the step"}),
]


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (``seqvision: error: ...``, exit 2), like our own errors."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _at_least(minimum: int):
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be at least {minimum}")
        return value

    parse.__name__ = "int"
    return parse


def _dest(section: str, name: str) -> str:
    return f"{section}__{name}"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="seqvision", description="Learn from samples made of several images.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    _train_parser(sub.add_parser("train", help="train a CNN+LSTM on a data root or manifest"))
    _tune_parser(sub.add_parser("tune", help="search heads and training options on cached features (Optuna), then train and test the best"))

    p = sub.add_parser("evaluate", help="metrics and confusion matrix of a checkpoint on labelled data")
    p.add_argument("checkpoint", help="a best.ckpt or last.ckpt written by seqvision train")
    p.add_argument("--data", required=True, help="labelled data: a data root or a .csv/.jsonl manifest")
    p.add_argument("--out", help="folder for metrics.json, confusion_matrix.png and report.html")
    p.add_argument("--split", choices=["train", "val", "test"], help="evaluate only this split of the data")
    p.add_argument("--per-group", action="store_true", help="also the metrics of each group (in metrics.json and the report)")
    p.add_argument("--group-by", help="the groups: a manifest column (default 'group') or, for a folder, a regex on the sample names")
    _inference_flags(p)
    p.add_argument("--diagnostics", choices=DIAGNOSTICS_CHOICES, default="auto",
                   help="the model on shuffled, reversed, one-image (full: and mirrored) samples; auto: full up to 2000 images in the split, else fast (default: %(default)s)")

    p = sub.add_parser("predict", help="predict samples (sample folders, data roots or a manifest)")
    p.add_argument("checkpoint", help="a best.ckpt or last.ckpt written by seqvision train")
    p.add_argument("inputs", nargs="+", help="sample folders, video files, data roots or manifests")
    p.add_argument("--out", help="preds.csv or preds.json (default: print CSV)")
    _inference_flags(p)

    p = sub.add_parser("demo", help="the main job on built-in synthetic data, offline (a few minutes on a CPU)")
    p.add_argument("--out", default="runs/demo", help="folder for the data and both runs (default: %(default)s)")
    p.add_argument("--max-epochs", type=_at_least(1), default=30, help="most epochs per run (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    _extract_parser(sub.add_parser("extract", help="compute and cache one feature vector per image (frozen backbone)"))
    _pack_parser(sub.add_parser("pack", help="write a folder or manifest into tar shards (WebDataset style) that train, evaluate, predict and extract read"))

    p = sub.add_parser("cache", help="show or clear the feature cache")
    p.add_argument("action", choices=["info", "clear"], help="info: list the keys; clear: remove them (or --key)")
    p.add_argument("folder", nargs="?", help="the feature-cache folder (the same as --cache-dir)")
    p.add_argument("--cache-dir", "--dir", dest="dir", help="feature-cache folder (default: $SEQVISION_CACHE or ~/.cache/seqvision/features)")
    p.add_argument("--key", help="clear only this key")

    p = sub.add_parser("report", help="write RUN/<split>/report.html: metrics, curves, confident errors, attention")
    p.add_argument("run", help="a run folder written by `seqvision train`")
    p.add_argument("--split", choices=["train", "val", "test"], help="default: test, else val")
    p.add_argument("--diagnostics", choices=DIAGNOSTICS_CHOICES, default="auto", help="as for evaluate (default: %(default)s)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the GPU when there is one)")
    p.add_argument("--runtime", choices=RUNTIME_CHOICES, help="the CNN's forward, as for evaluate (default: the one whose features the run trained on; torch for a CNN that learned)")

    p = sub.add_parser("export", help="ONNX or TorchScript graphs of a checkpoint (whole model, encoder, sequence part; a causal-shift model's stream step too) and model.json")
    p.add_argument("checkpoint", help="a best.ckpt or last.ckpt written by seqvision train")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="default: %(default)s")
    p.add_argument("--out", required=True, help="folder for the graphs and model.json")
    p.add_argument("--opset", type=_at_least(1), default=17, help="ONNX opset (default: %(default)s)")

    p = sub.add_parser("compare", help="runs side by side: headline on val and test, diagnostics, options that differ, learning curves, per-class F1")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders of seqvision train, tune's best-N/, or seqvision evaluate --out folders (one task and class set)")
    p.add_argument("--out", help="folder for compare.html, compare.md and the curves' PNG files (default: print the table only)")

    _stream_parser(sub.add_parser("stream", help="predict frame by frame, live: a video, camera, network stream or a folder receiving images"))
    _serve_parser(sub.add_parser("serve", help="an HTTP API for a checkpoint (POST /predict, GET /model, GET /health), with dynamic batching"))

    _inspect_parser(sub.add_parser("inspect", help="what a data set holds and what is wrong with it: counts per label and split, leaks, unreadable files, thumbnails (HTML)"))
    sub.add_parser("backbones", help="list the backbone names")
    for command in sub.choices.values():
        command.add_argument("--verbose", action="store_true", help="also show the libraries' messages (Lightning's banner and hints, deprecation notices)")
    return parser


def _train_parser(p: argparse.ArgumentParser) -> None:
    """``train``: the run's own flags, then one flag per config field (``_TRAIN_FLAGS``)."""
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, config.yaml, metrics)")
    p.add_argument("--config", help="YAML file with data/model/train sections; flags override it")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.ckpt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs to a file or pipe get one line per epoch anyway)")
    _tracking_flags(p)
    _config_flags(p)


def _tune_parser(p: argparse.ArgumentParser) -> None:
    """``tune``: the search's own flags, then every flag of ``train`` (the options trials start from)."""
    p.add_argument("--out", required=True, help="folder for study.db (rerun the same command to continue), best_config.yaml, the best run, report.html")
    p.add_argument("--config", help="YAML file with data/model/train sections; flags override it")
    p.add_argument("--trials", type=_at_least(1), default=50, help="finished trials in the study, counting earlier runs (default: %(default)s)")
    p.add_argument("--timeout", type=float, help="seconds for this run's trials and the best trained again, after the feature cache is filled (default: none)")
    p.add_argument("--metric", choices=["val_acc", "val_f1", "val_map", "val_loss", "val_mae", "val_rmse"], help="validation metric to optimise (default: val_acc, or val_mae for numbers)")
    p.add_argument("--motion", choices=["auto", "off", "only"], default="auto", help="motion trials: the CNN's last stages fine-tuned with a temporal shift on cached maps (minutes each). auto: the README's motion recipe as trial 2, more while one scores as well as the best head trial; only: motion trials only; off: heads on frozen features only (default: %(default)s)")
    p.add_argument("--space", help="YAML file narrowing, widening or fixing the search space (see README)")
    _tracking_flags(p, trials=True)
    _config_flags(p)


def _tracking_flags(p: argparse.ArgumentParser, *, trials: bool = False) -> None:
    """``--logger``, ``--mlflow-uri``, ``--experiment``: where the run's metrics go (seqvision.training.tracking)."""
    from seqvision.training.tracking import DEFAULT_LOGGERS, LOGGER_CHOICES

    nested = " (tune: the study a run, each trial a run nested under it)" if trials else ""
    p.add_argument("--logger", type=_logger_names, default=DEFAULT_LOGGERS, metavar="NAMES",
                   help=f"comma-separated: {', '.join(LOGGER_CHOICES)}{nested}; report.html's and compare's curves read "
                        f"the csv log; mlflow and wandb are extras: pip install \"seqvision[mlflow]\" (default: {','.join(DEFAULT_LOGGERS)})")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI: a server (http://HOST:PORT) or sqlite:///FILE (default: "
                                        "sqlite:///<folder above --out>/mlflow.db, artifacts in mlartifacts/ beside it)")
    p.add_argument("--experiment", default="seqvision", help="MLflow experiment and W&B project (default: %(default)s)")


def _logger_names(text: str) -> tuple[str, ...]:
    """An argparse type: ``--logger csv,mlflow`` -> the names, each known (a usage error otherwise)."""
    from seqvision.training.tracking import parse_loggers

    try:
        return parse_loggers(text)
    except SeqVisionError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--logger {text!r}: ")) from None


def _tracking(args: argparse.Namespace):
    """The run's Tracking, checked (a tracker not installed stops here, before any work)."""
    from seqvision.training.tracking import Tracking

    return Tracking(loggers=args.logger, mlflow_uri=args.mlflow_uri, experiment=args.experiment)


def _config_flags(p: argparse.ArgumentParser, only: frozenset[str] | None = None) -> None:
    """One flag per config field (``_TRAIN_FLAGS``; ``only``: those of these fields), default None so only
    given flags override the config file."""
    defaults = _config_defaults()
    for *flags, section, name, options in _TRAIN_FLAGS:
        if only is not None and name not in only:
            continue
        if "action" not in options and "choices" not in options:
            options = {"metavar": name.upper(), **options}
        # defaults stay None here (only given flags override the config file); the help shows the real one
        shown = defaults[section][name]
        if shown is not None and "(default" not in options.get("help", ""):
            shown = ",".join(map(str, shown)) if isinstance(shown, list) else shown
            options = {**options, "help": f"{options.get('help', '')} (default: {shown})".lstrip().replace("%", "%%")}
        p.add_argument(*flags, dest=_dest(section, name), default=None, **options)


def _extract_parser(p: argparse.ArgumentParser) -> None:
    """``extract``: the backbone, its preprocessing, the video sampling to cache for, and the cache."""
    p.add_argument("--data", required=True, help="a data root or a .csv/.jsonl manifest")
    p.add_argument("--cache-dir", "--out", dest="out", help="feature-cache folder (default: $SEQVISION_CACHE or ~/.cache/seqvision/features)")
    p.add_argument("--backbone", default="resnet18", help="as for train (default: %(default)s)")
    p.add_argument("--weights", default="imagenet", help="imagenet | none | PATH (default: %(default)s)")
    p.add_argument("--pool", choices=POOL_CHOICES, default="avg", help="grid2: 2x2 cells, keeps coarse layout")
    p.add_argument("--drop-stages", type=_at_least(0), default=0, help="remove the backbone's last N stages (default: %(default)s)")
    p.add_argument("--image-size", type=_at_least(1), help="crop size (default: the backbone's)")
    p.add_argument("--resize-size", type=_at_least(1), help="shorter side before the crop (default: the backbone's ratio)")
    p.add_argument("--mean", type=float, nargs=3, help="normalization mean R G B (default: the weights')")
    p.add_argument("--std", type=float, nargs=3, help="normalization std R G B (default: the weights')")
    p.add_argument("--batch-size", type=_at_least(1), default=64, help="images per CNN batch (across samples)")
    p.add_argument("--num-workers", type=_at_least(0), help="decoding workers (default: one per spare core)")
    p.add_argument("--precision", choices=["auto", "32", "bf16", "int8"], default="auto", help="auto: bf16 where the hardware is fast at it; int8: quantized on the first CNN batch's images (up to 64), by ONNX Runtime on the CPU")
    _runtime_flag(p, "auto = the fastest on this machine, measured once (a cache already filled keeps its runtime)")
    p.add_argument("--cache-dtype", choices=["float32", "float16"], default="float32", help="storage of the features (default: %(default)s)")
    p.add_argument("--exact-decode", action="store_true", help="decode every pixel of large JPEGs and video frames (as for train)")
    p.add_argument("--video-decoder", choices=VIDEO_DECODER_CHOICES, default="auto", help=VIDEO_DECODER_HELP + " (as for train)")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone (slow start, faster steady state)")
    p.add_argument("--content-hash", action="store_true", help="identify files by content hash, not path+size+mtime")
    p.add_argument("--sampling", choices=SAMPLING_CHOICES, default="uniform", help="videos: the frames training will sample (see train)")
    p.add_argument("--num-frames", type=_at_least(1), help="videos: frames per clip; default: cache every frame")
    p.add_argument("--stride", type=_at_least(1), default=1, help="videos, --sampling stride: every k-th frame")
    p.add_argument("--fps", type=float, help="videos, --sampling stride: frames per second")
    p.add_argument("--eval-clips", type=_at_least(1), default=1, help="videos, --sampling random: evaluation clips")
    p.add_argument("--shard-rows", type=_at_least(1), default=4096, help="images per committed cache shard (what a crash can lose)")
    p.add_argument("--on-bad-image", choices=["error", "skip"], default="error", help="stop, or leave bad images out and report them (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _inspect_parser(p: argparse.ArgumentParser) -> None:
    """``inspect``: the data, where the page goes, how much to read, and train's options that decide the split."""
    p.add_argument("data", help="a data root (ROOT/<label>/<sample>/<images>) or a .csv/.jsonl manifest")
    p.add_argument("--out", help="folder for inspect.html and inspect.json (default: print the summary only)")
    p.add_argument("--config", help="a run's YAML file: its data options and seed decide the split shown; flags override it")
    p.add_argument("--check-images", action="store_true", help="decode every image and every video frame: finds unreadable and truncated files (slow on big data)")
    p.add_argument("--hash", choices=["auto", "on", "off"], default="auto", help="sha256 of every file, to find one content under two names in two splits; auto: when the data has at most 10,000 files and 1 GiB (default: %(default)s)")
    p.add_argument("--max-headers", type=_at_least(0), default=2000, help="image headers read for sizes and formats, evenly spread over the files; 0: all (default: %(default)s)")
    p.add_argument("--thumbnails", type=_at_least(0), default=3, help="samples per label shown as strips of their images, in order (default: %(default)s)")
    p.add_argument("--strict", action="store_true", help="exit with status 3 when a leak or an unreadable or truncated file is found (CI)")
    _config_flags(p, only=_INSPECT_FIELDS)


_INSPECT_FIELDS = frozenset({"task", "targets", "min_images", "group_by", "val_fraction", "test_fraction", "seed"})


def _stream_parser(p: argparse.ArgumentParser) -> None:
    """``stream``: a checkpoint, a SOURCE, where the JSON lines go, how often, and the head's window."""
    p.add_argument("checkpoint", help="a best.ckpt or last.ckpt written by seqvision train")
    p.add_argument("source", help="a video file, a folder that receives images, a camera (/dev/video0, avfoundation:0) or a URL FFmpeg opens (rtsp://...)")
    p.add_argument("--out", metavar="FILE.jsonl", help="append the JSON lines to this file, line by line (default: stdout)")
    p.add_argument("--every", type=_at_least(1), default=1, metavar="K", help="a line every K frames the model sees (default: %(default)s)")
    p.add_argument("--window", type=_at_least(1), metavar="N", help="run the head on the last N frames (any head; default: LSTM/GRU carry their state, mean/max run over every frame, other heads take the run's --num-frames, else 16)")
    p.add_argument("--frame-step", type=_at_least(1), default=1, metavar="S", help="feed every S-th frame of the source to the model, to space frames as in training (default: %(default)s)")
    p.add_argument("--max-frames", type=_at_least(1), metavar="N", help="stop after the model has seen N frames")
    p.add_argument("--idle-timeout", type=float, metavar="SEC", help="folder source: stop after SEC seconds without a new file (default: run until interrupted)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the GPU when there is one)")
    p.add_argument("--precision", choices=["auto", "32", "bf16"], default="auto", help="the CNN's: auto = bf16 where the hardware is fast at it; 32 = fp32 (the heads run in fp32)")
    _runtime_flag(p)


def _serve_parser(p: argparse.ArgumentParser) -> None:
    """``serve``: a checkpoint, where to listen, the API key, the request limits and the batching."""
    p.add_argument("checkpoint", help="a best.ckpt or last.ckpt written by seqvision train")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="default: %(default)s; 0: any free port, said in the log")
    p.add_argument("--api-key", help="required on every request (X-API-Key or Authorization: Bearer) (default: $SEQVISION_API_KEY)")
    p.add_argument("--max-request-mb", type=float, default=64.0, help="largest request body (default: %(default)s)")
    p.add_argument("--max-images", type=_at_least(1), default=64, help="images per request, uploaded or sampled from a video (default: %(default)s)")
    p.add_argument("--max-pixels", type=_at_least(1), default=40_000_000, help="pixels per image or video frame, read from its header (default: %(default)s)")
    p.add_argument("--max-video-seconds", type=float, default=600.0, help="longest video (default: %(default)s)")
    p.add_argument("--queue-size", type=_at_least(1), default=64, help="requests that may wait; one more gets 503 (default: %(default)s)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a request waits for others to share its CNN batch (default: %(default)s)")
    p.add_argument("--max-batch-images", type=_at_least(1), help="images per batch (default: the chunk size; 1: no batching)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the GPU when there is one)")
    p.add_argument("--chunk-size", type=_at_least(1), help="images per CNN pass (default: the run's --chunk-size, else chosen from the backbone, image size and free memory)")
    p.add_argument("--precision", choices=["auto", "32", "bf16"], default="auto", help="the CNN's: auto = bf16 where the hardware is fast at it; 32 = fp32 (the heads run in fp32)")
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], default="info", help="uvicorn's (info: one line per request)")
    _runtime_flag(p)


def _runtime_flag(p: argparse.ArgumentParser, auto: str = "auto = the fastest on this machine, measured once") -> None:
    """``--runtime``: what runs the CNN's forward (seqvision.features.runtimes), where it only runs forward."""
    p.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto",
                   help=f"what runs the CNN: {auto}; torch; onnxruntime or openvino (CPU, fp32, where installed) (default: %(default)s)")


def _config_defaults() -> dict[str, dict[str, Any]]:
    from seqvision.config import RunConfig

    return RunConfig().to_dict()


def _inference_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=_at_least(1), default=8, help="samples per batch (all their images go through the CNN at once)")
    p.add_argument("--num-workers", type=_at_least(0), default=0, help="decoding worker processes")
    p.add_argument("--on-bad-image", choices=["error", "skip"], default=None, help="stop at a bad image, or leave it out (default: as trained)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the GPU when there is one)")
    p.add_argument("--chunk-size", type=_at_least(1), help="images per CNN pass and per loaded piece of a sample: bounds memory (default: the run's --chunk-size, else chosen from the backbone, image size and free memory)")
    p.add_argument(
        "--precision", choices=["auto", "32", "bf16", "int8"], default="auto",
        help="the CNN's: auto = bf16 where the hardware is fast at it (fp16 on GPUs without bf16, else fp32); 32 = fp32; "
             "int8 = quantized on the first CNN batch's images (up to 64), by ONNX Runtime on the CPU",
    )
    _runtime_flag(p)


def _inference_device(args: argparse.Namespace) -> str:
    from seqvision.runtime import default_device, resolve_device

    return str(resolve_device(args.device)) if args.device else str(default_device())


def _version() -> str:
    from seqvision import __version__

    return __version__


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in vars(args).items():
        if "__" in key and value is not None:
            section, name = key.split("__", 1)
            out.setdefault(section, {})[name] = value
    return out


def _report(lines: list[str], what: str) -> None:
    if lines:
        print(f"{len(lines)} {what} (not silently dropped):", file=sys.stderr)
        for line in lines:
            print(f"  - {line}", file=sys.stderr)


def _print_findings(metrics: dict | None) -> None:
    for finding in (metrics or {}).get("diagnostics", {}).get("findings", []):
        print(f"  - {finding}")


def cmd_train(args: argparse.Namespace) -> int:
    from seqvision.config import resolve_config
    from seqvision.evaluation.metrics import headline
    from seqvision.workflows import train_and_evaluate

    tracking = _tracking(args)
    cfg = resolve_config(args.config, _overrides(args))
    bar = not args.no_progress and sys.stdout.isatty()  # a file or a pipe gets one line per epoch instead
    result = train_and_evaluate(cfg, args.out, resume=args.resume, progress=bar, epoch_log=not bar, tracking=tracking)
    if result.feature_cache:
        fc = result.feature_cache
        peers = f", {fc['by_peers']} by the other processes" if fc.get("by_peers") else ""
        by = f", by {fc['runtime']}" if fc.get("runtime", "torch") != "torch" else ""
        print(f"feature cache: {fc['cached']} images reused, {fc['computed']} computed{peers}{by} ({fc['dir']})")
    print(f"best checkpoint: {result.best_checkpoint}")
    for split in ("val", "test"):
        metrics = getattr(result, f"{split}_metrics")
        if metrics:
            print(f"{split}: {headline(metrics)}  ({Path(args.out) / split / 'metrics.json'})")
            _print_findings(metrics)
    _report(result.reported, "data notes: samples or images left out, clips shortened")
    _print_tracking(Path(args.out))
    return 0


def _print_tracking(out: Path) -> None:
    """Where MLflow and W&B keep the run (``tracking.json``), and the command that shows it."""
    import json

    saved = out / "tracking.json"
    record = json.loads(saved.read_text()) if saved.exists() else {}
    if "mlflow" in record:
        m = record["mlflow"]
        see = f"mlflow ui --backend-store-uri {m['tracking_uri']}" if m["tracking_uri"].startswith("sqlite:") else "open it there"
        print(f"mlflow: run {m['run_id']} in {m['tracking_uri']} ({see})")
    if "wandb" in record:
        print(f"wandb: offline run in {record['wandb']['run_dir']} (wandb sync {record['wandb']['run_dir']} uploads it)")


def cmd_tune(args: argparse.Namespace) -> int:
    from seqvision.config import resolve_config
    from seqvision.evaluation.metrics import headline
    from seqvision.tuning.study import tune

    tracking = _tracking(args)
    cfg = resolve_config(args.config, _overrides(args))
    result = tune(cfg, args.out, trials=args.trials, timeout=args.timeout, metric=args.metric, motion=args.motion,
                  space_file=args.space,
                  say=lambda line: print(line, flush=True), tracking=tracking)
    motion = f", {result.motion_trials} motion trials" if result.motion_trials else ""
    kind = " (a motion trial)" if result.best_params.get("motion") else ""
    print(f"{result.finished} trials ({result.pruned} pruned{motion}); best: trial {result.best_trial}{kind}, {result.best_value:.4f}")
    print(f"wrote {result.best_config} (seqvision train --config {result.best_config} --out RUN reproduces it)")
    if result.test_metrics:
        print(f"best model on the test split: {headline(result.test_metrics)}  ({result.best_run / 'test' / 'metrics.json'})")
    print(f"wrote {result.report}")
    _print_tracking(Path(args.out))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from seqvision.workflows import evaluate
    from seqvision.evaluation.metrics import headline

    result = evaluate(
        args.checkpoint, args.data, args.out, batch_size=args.batch_size, num_workers=args.num_workers,
        on_bad_image=args.on_bad_image, split=args.split, device=_inference_device(args), precision=args.precision,
        per_group=args.per_group or args.group_by is not None, group_by=args.group_by, diagnostics=args.diagnostics,
        chunk_size=args.chunk_size, runtime=args.runtime,
    )
    print(headline(result.metrics))
    _print_findings(result.metrics)
    for path in result.files:
        print(f"wrote {path}")
    _report(result.skipped, "images left out")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from seqvision.workflows import predict

    rows, skipped = predict(
        args.checkpoint, args.inputs, args.out, batch_size=args.batch_size, num_workers=args.num_workers,
        on_bad_image=args.on_bad_image, device=_inference_device(args), precision=args.precision, chunk_size=args.chunk_size,
        runtime=args.runtime,
    )
    if args.out:
        print(f"wrote {len(rows)} predictions to {args.out}")
    else:
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["sample", "prediction"])
        writer.writeheader()
        writer.writerows(rows)
    _report(skipped, "images left out")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from seqvision.demo import run_demo

    result = run_demo(args.out, max_epochs=args.max_epochs, progress=not args.no_progress and sys.stdout.isatty())
    print(f"demo: CNN+LSTM test accuracy {result.accuracy:.3f} on {result.test_samples} test samples (target >= 0.95)")
    print(f"demo: the same model with each test sample's frames shuffled {result.control_accuracy:.3f} (chance = 0.5)")
    for finding in result.findings or []:
        print(f"  - {finding}")
    print(f"demo: runs, checkpoints and metrics in {result.out_dir}")
    return 0 if result.accuracy >= 0.95 else 1


def cmd_extract(args: argparse.Namespace) -> int:
    from seqvision.config import DataConfig, ModelConfig, RunConfig
    from seqvision.workflows import extract

    # the run whose cache this fills: videos get the frames its sampling can pick in training and in
    # evaluation (images are cached whole)
    cfg = RunConfig(
        data=DataConfig(
            data=args.data, image_size=args.image_size, resize_size=args.resize_size, mean=args.mean, std=args.std,
            num_workers=args.num_workers, on_bad_image=args.on_bad_image, cache_dtype=args.cache_dtype,
            feature_precision=args.precision, feature_runtime=args.runtime, sampling=args.sampling, num_frames=args.num_frames, stride=args.stride,
            fps=args.fps, eval_clips=args.eval_clips, exact_decode=args.exact_decode, video_decoder=args.video_decoder,
        ),
        model=ModelConfig(backbone=args.backbone, weights=args.weights, pool=args.pool, drop_stages=args.drop_stages, freeze=True),
    )
    stats, store = extract(
        cfg, out=args.out, batch_size=args.batch_size, compile=args.compile, content_hash=args.content_hash,
        shard_rows=args.shard_rows, progress=not args.no_progress and sys.stderr.isatty(),
    )
    steady = f"; {stats.steady_images_per_second:.1f} images/s after compiling" if args.compile and stats.images else ""
    print(
        f"extracted {stats.images} images ({stats.images_per_second:.1f} images/s{steady}, {stats.dtype}, {stats.runtime}), "
        f"{stats.cached} already cached" + (f", {stats.by_peers} by the other processes" if stats.by_peers else "") + f" -> {store.dir}"
    )
    _report(stats.skipped, "images left out")
    _report(stats.notes, "notes")
    return 0


def _pack_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="a data root or a .csv/.jsonl manifest (each clip of a video stores a copy of the whole video: "
                                "N clips of one video take N times its size)")
    p.add_argument("--out", required=True, help="the pack folder: tar shards and index.json (give it as DATA to train, evaluate, predict, extract)")
    p.add_argument("--shard-size", default="1GB", help="about this many bytes per shard: 500MB, 1GB, 1GiB, ... (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace another pack already in --out")
    p.add_argument("--group-by", help="the groups, kept in the pack: a manifest column (default 'group') or, for a folder, a regex on the sample names")
    p.add_argument("--targets", type=lambda text: text.split(","), help="manifest columns of regression targets, comma-separated (as for train)")


def cmd_pack(args: argparse.Namespace) -> int:
    from seqvision.data.pack_writer import pack, parse_size

    done = pack(args.data, args.out, shard_size=parse_size(args.shard_size), overwrite=args.overwrite,
                targets=args.targets, group_by=args.group_by)
    print(f"packed {done.samples} samples into {done.shards} shard(s), {done.bytes / 1e6:.1f} MB -> {done.out}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from seqvision.errors import ConfigError
    from seqvision.features.cache import cache_clear, cache_info, default_cache_root

    if args.folder and args.dir and Path(args.folder) != Path(args.dir):
        raise ConfigError(f"cache {args.action}: two folders given ({args.folder} and --cache-dir {args.dir}); give one")
    chosen = args.folder or args.dir
    root = Path(chosen) if chosen else default_cache_root()
    if args.action == "clear":
        freed = cache_clear(root, args.key)
        print(f"removed {freed / 1e6:.1f} MB from {root}")
        return 0
    entries = cache_info(root)
    if not entries:
        print(f"{root}: empty")
    for e in entries:
        prep = e["preprocessing"] or {}
        print(
            f"{e['key']}  {e['backbone']}  weights {e['weights']}  {prep.get('image_size')}px  pool {e['pool']}  "
            f"{e['compute']}->{e['dtype']}" + (f" ({e['runtime']})" if e["runtime"] != "torch" else "") + f"  {e['entries']} images  {e['shards']} shards  {e['bytes'] / 1e6:.1f} MB"
            + (f"  [{e['note']}]" if e["note"] else "")
        )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from seqvision.workflows import report
    from seqvision.evaluation.metrics import headline

    result = report(args.run, split=args.split, device=_inference_device(args), diagnostics=args.diagnostics, runtime=args.runtime)
    print(headline(result.metrics))
    _print_findings(result.metrics)
    for path in result.files:
        print(f"wrote {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from seqvision.evaluation.compare import compare, load_runs
    from seqvision.evaluation.compare_report import summary_text, write_comparison

    comparison = compare(load_runs(args.runs))
    print(summary_text(comparison))
    if args.out:
        for path in write_comparison(comparison, args.out):
            print(f"wrote {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from seqvision.export.exporter import check_format, export_checkpoint

    check_format(args.format, args.opset)  # before the checkpoint is loaded
    result = export_checkpoint(args.checkpoint, args.out, format=args.format, opset=args.opset)
    for name, path in result.files.items():
        checked = "frame by frame on every prefix" if name == "stream" else "on padded samples of several lengths"
        print(f"wrote {path} (max |{args.format} - PyTorch| {result.max_diff[name]:.1e} {checked})")
    print(f"wrote {result.out_dir / 'model.json'}")
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    from seqvision.streaming.run import run_stream

    summary = run_stream(
        args.checkpoint, args.source, out=args.out, every=args.every, window=args.window, frame_step=args.frame_step,
        max_frames=args.max_frames, idle_timeout=args.idle_timeout, device=_inference_device(args), precision=args.precision,
        on_start=lambda line: print(line, file=sys.stderr, flush=True),  # stdout carries the JSON lines only
        runtime=args.runtime,
    )
    where = f" to {args.out}" if args.out else ""
    print(f"stream {'interrupted' if summary.interrupted else 'ended'} after {summary.frames} frames: {summary.rows} lines "
          f"written{where}, {summary.cnn_calls} CNN forwards", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from seqvision.errors import ConfigError

    try:
        import fastapi, python_multipart, uvicorn  # noqa: F401,E401 - the serve extra
    except ImportError as exc:
        raise ConfigError(f'seqvision serve needs FastAPI, uvicorn and python-multipart ({exc.name} is missing): pip install "seqvision[serve]"') from None
    from seqvision.serving.limits import ServeLimits
    from seqvision.serving.server import serve

    limits = ServeLimits(max_request_mb=args.max_request_mb, max_images=args.max_images, max_pixels=args.max_pixels,
                         max_video_seconds=args.max_video_seconds)  # checked here, before the checkpoint is loaded
    serve(
        args.checkpoint, host=args.host, port=args.port, api_key=args.api_key, limits=limits, device=_inference_device(args),
        precision=args.precision, chunk_size=args.chunk_size, queue_size=args.queue_size, max_wait_ms=args.max_wait_ms,
        max_batch_images=args.max_batch_images, log_level=args.log_level, runtime=args.runtime,
    )
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from seqvision.models.backbones import available_backbones

    print("\n".join(available_backbones()))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from seqvision.config import resolve_config
    from seqvision.errors import ConfigError
    from seqvision.inspection import inspect_data, summary_lines, write_report

    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a file; give a folder for inspect.html and inspect.json")
    overrides = _overrides(args)
    overrides.setdefault("data", {})["data"] = args.data  # so --group-by and --targets are checked against it
    cfg = resolve_config(args.config, overrides)
    d = cfg.data
    inspection = inspect_data(
        args.data, group_by=d.group_by, targets=d.targets, task=d.task, val_fraction=d.val_fraction,
        test_fraction=d.test_fraction, seed=cfg.train.seed, min_images=d.min_images, check_images=args.check_images,
        hash_files=args.hash, max_headers=args.max_headers, thumbnails=args.thumbnails,
    )
    report = write_report(inspection, args.out)
    print("\n".join(summary_lines(report)))
    for path in report.files:
        print(f"wrote {path}")
    return 3 if args.strict and report.failed_strict else 0


COMMANDS = {
    "train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "demo": cmd_demo,
    "extract": cmd_extract, "pack": cmd_pack, "cache": cmd_cache, "report": cmd_report, "backbones": cmd_backbones,
    "stream": cmd_stream, "inspect": cmd_inspect,
    "export": cmd_export, "tune": cmd_tune,
    "serve": cmd_serve, "compare": cmd_compare,
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed on one line
        return exc.code if isinstance(exc.code, int) else 2
    if args.command in ("train", "tune", "evaluate", "predict", "demo", "extract", "report", "stream", "serve"):
        from seqvision.runtime import tune_allocator

        tune_allocator()  # before the first big allocation: see runtime.tune_allocator
    if not args.verbose:
        _quiet_libraries()
    _one_rank_prints()
    _one_line_warnings()
    try:
        return COMMANDS[args.command](args)
    except SeqVisionError as exc:
        print(f"seqvision: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("seqvision: interrupted", file=sys.stderr)
        return 130


def _one_rank_prints() -> None:
    """Under torchrun, the first process prints the results; the others' stdout goes nowhere (their
    warnings and errors still reach stderr)."""
    import os

    if os.environ.get("RANK", "0") not in ("", "0"):
        sys.stdout = open(os.devnull, "w")


def _one_line_warnings() -> None:
    """Warnings as ``seqvision: warning: ...`` on one line, like our errors, not Python's file:line form
    with a line of source code (the message names what to change)."""
    import warnings

    warnings.formatwarning = lambda message, category, filename, lineno, line=None: f"seqvision: warning: {message}\n"


def _quiet_libraries() -> None:
    """Library chatter that says nothing about the run: Lightning's start-up banner (GPU available..., tips,
    advertisements), its hints for small data, and deprecation notices from dependencies. ``--verbose``
    shows them all."""
    import logging
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*(smaller than the logging interval|LeafSpec|treespec).*")
    for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(torch|torchvision|lightning|lightning_fabric|torchmetrics|timm|tensorboard|google)(\.|$)")


if __name__ == "__main__":
    sys.exit(main())
