"""Shared by the accuracy benchmarks: real data readers, the frozen-MobileNetV2 recipe, the ablation rows,
seeds, the printed header and the tables.

Each script builds its task from real data installed offline, trains every row with seqvision's default
recipe (``seqvision.train`` from the Python API) on one feature cache shared by all its runs, and prints a
markdown table of mean test accuracy over seeds with its min-max spread, then one JSON line with everything.
"""

from __future__ import annotations

import gzip
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenet_v2-imagenet.pth"
sys.path.insert(0, str(ROOT / "src"))

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# Fashion-MNIST's classes in label order, as short names usable in file names and tables
FASHION_CLASSES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")

SEEDS = (0, 1, 2)
QUICK_SEEDS = (0,)


# ---------------------------------------------------------------- Fashion-MNIST (idx format)

def require_fashion() -> None:
    """Stop with one clear line when Debian's Fashion-MNIST is not installed."""
    if not fashion_available():
        sys.exit(f"Fashion-MNIST not found in {FASHION_DIR} (Debian package dataset-fashion-mnist)")


def fashion_available(folder: Path = FASHION_DIR) -> bool:
    return all((folder / name).is_file() for pair in FASHION_FILES.values() for name in pair)


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzipped): magic 0x0000 0x08 <ndim>, big-endian int32 dims, then uint8 data."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(int(d) for d in dims))


def load_fashion(split: str, folder: Path = FASHION_DIR) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 28, 28) uint8, labels (N,) int)`` of the official ``train`` or ``test`` split."""
    images, labels = (read_idx(folder / name) for name in FASHION_FILES[split])
    return images, labels.astype(np.int64)


def pick_per_class(labels: np.ndarray, classes: list[int], n: int, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """``n`` distinct indices of each class, drawn without replacement."""
    return {c: rng.choice(np.flatnonzero(labels == c), size=n, replace=False) for c in classes}


# ---------------------------------------------------------------- the recipe and the ablation rows

def feature_precision() -> str:
    """What ``feature_precision="auto"`` computes the frozen cache in on this machine (bf16 or fp32)."""
    import torch

    from seqvision.runtime import inference_dtype

    return str(inference_dtype(torch.device("cpu"), "auto")).removeprefix("torch.")


def base_config(manifest: Path, cache: Path, *, seed: int, image_size: int, max_epochs: int = 20):
    """seqvision's defaults (LSTM head, hidden 256, lr 1e-3, batch 8, 20 epochs, patience 5, ...) with a
    FROZEN ImageNet MobileNetV2 on the offline weights (mean = std = 0.5) and a feature cache.

    ``resize_size = image_size``: the whole frame is kept. The default (image_size * 256/224, then a centre
    crop) would cut a border off, and with it an object near the edge of the canvas. No flip: left/right
    carries meaning in these tasks (also the library's new default)."""
    from seqvision import DataConfig, ModelConfig, RunConfig, TrainConfig

    cfg = RunConfig(data=DataConfig(data=str(manifest)), model=ModelConfig(), train=TrainConfig(seed=seed))
    cfg.model.backbone, cfg.model.weights, cfg.model.freeze = "mobilenet_v2", str(WEIGHTS), True
    cfg.data.mean = cfg.data.std = [0.5, 0.5, 0.5]  # what these weights expect (shared/weights/README.md)
    cfg.data.image_size = cfg.data.resize_size = image_size
    cfg.data.hflip = False
    cfg.data.cache = str(cache)
    cfg.data.num_workers = 0
    cfg.train.max_epochs = max_epochs
    if hasattr(cfg.train, "diagnostics"):  # the end-of-training diagnostics without their mirrored pass, which
        cfg.train.diagnostics = "fast"  # runs the CNN live over the split again (seconds per run, nothing measured here)
    return cfg


def _single(cfg) -> None:
    cfg.data.num_frames, cfg.model.head = 1, "mean"  # uniform sampling of 1 picks the middle image


def _set(**model) -> Callable:
    def apply(cfg) -> None:
        for key, value in model.items():
            setattr(cfg.model, key, value)

    return apply


# name -> how the row changes the default config; "lstm (default)" is the default recipe itself
ROWS: dict[str, Callable] = {
    "single middle image + linear": _single,
    "mean pooling": _set(head="mean"),
    "lstm (default)": _set(),
    # the default before this table's fix: raw pooled features into the LSTM, the final state alone read out
    "lstm, raw input, last state (old default)": _set(input_norm=False, readout="last"),
    "bi-lstm": _set(bidirectional=True),
    "attention": _set(head="attention"),
    "transformer": _set(head="transformer"),
    "lstm + temporal diff": _set(temporal_diff=True),
    "bi-lstm + temporal diff": _set(bidirectional=True, temporal_diff=True),
}


def finetune_rows(stages: int, max_epochs: int | None = None, **model) -> dict[str, Callable]:
    """Rows that fine-tune the last ``stages`` stages on the frozen stages' cached maps (no augmentation, so the
    maps are computed once), without and with a temporal shift in those stages; ``max_epochs``: theirs, if not
    the table's; ``model``: more model options of every such row (e.g. ``head="mean"``)."""

    def maps(shift: str) -> Callable:
        def apply(cfg) -> None:
            cfg.model.freeze, cfg.model.trainable_stages, cfg.model.temporal_shift = False, stages, shift
            cfg.data.augment = False
            for key, value in model.items():
                setattr(cfg.model, key, value)
            if max_epochs is not None:
                cfg.train.max_epochs = max_epochs

        return apply

    name = f"last {stages} stages fine-tuned on cached maps"
    return {name: maps("off"), f"{name} + temporal shift (bidirectional)": maps("bidirectional"),
            f"{name} + temporal shift (causal)": maps("causal")}
def motion_recipe() -> dict[str, Any]:
    """The README's recipe for order that lives in motion, on MobileNetV2, as ``seqvision tune`` tries it
    first (``seqvision.tuning.motion``): the network cut at stride 8, its kept stages from stride 4 on
    fine-tuned on the cached maps of the others, mean head (drop_stages 12, trainable_stages 4)."""
    from seqvision.tuning.motion import RECIPE, recipe_cut

    drop, learn = recipe_cut("mobilenet_v2")
    return {"drop_stages": drop, "trainable_stages": learn, "head": RECIPE["head"], "backbone_lr": RECIPE["backbone_lr"]}


def motion_rows(modes: tuple[str, ...], max_epochs: int | None = None) -> dict[str, Callable]:
    """Rows of the motion recipe (:func:`motion_recipe`, no augmentation) with each temporal shift of ``modes``."""
    recipe = motion_recipe()

    def row(shift: str) -> Callable:
        def apply(cfg) -> None:
            cfg.model.freeze, cfg.model.temporal_shift, cfg.data.augment = False, shift, False
            cfg.model.drop_stages, cfg.model.trainable_stages = recipe["drop_stages"], recipe["trainable_stages"]
            cfg.model.head, cfg.train.backbone_lr = recipe["head"], recipe["backbone_lr"]
            if max_epochs is not None:
                cfg.train.max_epochs = max_epochs

        return apply

    name = f"stride-8 map, {recipe['trainable_stages']} stages fine-tuned, {recipe['head']}"
    return {name + (f" + shift ({m})" if m != "off" else ""): row(m) for m in modes}


QUICK_ROWS = ("single middle image + linear", "lstm (default)")


# ---------------------------------------------------------------- running and summarizing

@dataclass
class RunOutcome:
    accuracy: float
    seconds: float
    epochs: int
    test_metrics: dict = field(repr=False, default_factory=dict)
    best_checkpoint: Path | None = None
    epoch_seconds: list[float] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)
    final_train_loss: float | None = None  # mean training loss of the last epoch (how well it fit its training set)
    cache: dict | None = None  # the feature cache report of a frozen run: images found cached / computed, img/s
    curve: dict = field(default_factory=dict)  # per epoch: mean train loss, validation metric (learning_curve)


def final_train_loss(out: Path) -> float | None:
    """The mean ``train_loss`` of the last epoch in the run's CSV log."""
    import csv

    per_epoch: dict[int, list[float]] = {}
    for log in sorted(out.glob("logs/version_*/metrics.csv")):
        with open(log, newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("train_loss") not in (None, "") and row.get("epoch") not in (None, ""):
                    per_epoch.setdefault(int(row["epoch"]), []).append(float(row["train_loss"]))
    return statistics.fmean(per_epoch[max(per_epoch)]) if per_epoch else None


def learning_curve(out: Path) -> dict[str, list[float]]:
    """Per epoch, from the run's CSV log: the mean ``train_loss`` and the validation accuracy (or MAE) --
    what shows a plateau and when a run leaves it."""
    import csv

    train: dict[int, list[float]] = {}
    val: dict[int, float] = {}
    for log in sorted(out.glob("logs/version_*/metrics.csv")):
        with open(log, newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("epoch") in (None, ""):
                    continue
                epoch = int(row["epoch"])
                if row.get("train_loss") not in (None, ""):
                    train.setdefault(epoch, []).append(float(row["train_loss"]))
                for name in ("val_acc", "val_mae"):
                    if row.get(name) not in (None, ""):
                        val[epoch] = float(row[name])
    return {"train_loss": [round(statistics.fmean(train[e]), 3) for e in sorted(train)],
            "val": [round(val[e], 3) for e in sorted(val)]}


class EpochTimer:
    """A Lightning callback: wall time of each training epoch (its validation included)."""

    def __new__(cls):
        import lightning as L

        class _Timer(L.Callback):
            def __init__(self) -> None:
                self.seconds: list[float] = []  # whole epochs, validation included
                self.train_seconds: list[float] = []  # the training part of each epoch
                self._start = self._val_start = 0.0

            def on_train_epoch_start(self, trainer, module) -> None:
                self._start = time.perf_counter()

            def on_validation_epoch_start(self, trainer, module) -> None:
                self._val_start = time.perf_counter()

            def on_validation_epoch_end(self, trainer, module) -> None:
                if not trainer.sanity_checking:
                    self.seconds.append(time.perf_counter() - self._start)
                    self.train_seconds.append(self._val_start - self._start)

        return _Timer()


def quiet() -> None:
    """Lightning's banners (GPU available, tips, 'max_epochs reached') and known warnings off the output."""
    import logging
    import warnings

    import lightning.pytorch  # noqa: F401  (it sets its loggers' levels on import: set ours after)

    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")


def train_run(cfg, out: Path, *, metric: str = "accuracy") -> RunOutcome:
    """Train and test ``cfg``; ``RunOutcome.accuracy`` holds the test ``metric`` (``mae`` for regression)."""
    from seqvision import train

    timer = EpochTimer()
    start = time.perf_counter()
    run = train(cfg, out, progress=False, callbacks=[timer])
    seconds = time.perf_counter() - start
    outcome = RunOutcome(run.test_metrics[metric], seconds, len(timer.seconds), run.test_metrics, run.best_checkpoint)
    outcome.epoch_seconds = timer.seconds
    outcome.train_seconds = timer.train_seconds
    outcome.final_train_loss = final_train_loss(out)
    outcome.curve = learning_curve(out)
    outcome.cache = run.feature_cache
    return outcome


def spread(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "values": values}


def fmt(s: dict[str, Any]) -> str:
    """``0.912 (0.905-0.920)``: the mean over seeds and the min-max range; one seed: the value alone."""
    if len(s["values"]) == 1:
        return f"{s['mean']:.3f}"
    return f"{s['mean']:.3f} ({s['min']:.3f}-{s['max']:.3f})"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return ", ".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "no bf16 instructions"
    except OSError:
        pass
    return "unknown"


def header(title: str, *, seeds: tuple[int, ...], image_size: int, extra: list[str] = ()) -> str:
    import torch

    precision = feature_precision()
    lines = [
        f"# {title}",
        f"command: {shlex.join([Path(sys.executable).name, *[os.path.relpath(a, ROOT) if a == sys.argv[0] else a for a in sys.argv]])}",
        f"date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"machine: {os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), {cpu_model()} ({cpu_flags()}); "
        f"torch {torch.__version__}, python {platform.python_version()}; load average at the start (1 / 5 / 15 min): {load()}",
        f"backbone: FROZEN ImageNet MobileNetV2 ({os.path.relpath(WEIGHTS, ROOT)}, mean = std = 0.5), "
        f"{image_size} px, global average pooling, features computed once into one feature cache shared by every run",
        f"feature precision: {precision} (cfg.data.feature_precision 'auto': bf16 where the CPU is fast at it); heads train in fp32",
        f"seeds: {', '.join(map(str, seeds))} (each figure: mean over seeds, in brackets the min-max range over seeds)",
        *extra,
    ]
    return "\n".join(lines)


def elapsed(start: float) -> str:
    """``12 min 3 s (load average at the end: 2.1 / 2.3 / 2.2)``: other work on the 2 cores slows the run."""
    s = time.perf_counter() - start
    return f"{int(s // 60)} min {s % 60:.0f} s (load average at the end, 1 / 5 / 15 min: {load()})"


def load() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def run_rows(
    manifest: Path, cache: Path, runs: Path, *, rows: tuple[str, ...], seeds: tuple[int, ...], image_size: int,
    epochs: int, label: str = "", record: Callable[[RunOutcome], dict] = lambda out: {}, metric: str = "accuracy",
    adjust: Callable = lambda cfg: None, extra_rows: dict[str, Callable] | None = None, show_curves: bool = False,
) -> dict[str, list[dict]]:
    """Train every row (of ``ROWS``, then of ``extra_rows``) for every seed on ``manifest`` (one shared cache);
    one result dict per run, whose ``accuracy`` is the test ``metric``. ``adjust``: applied to every row's
    config first (e.g. a regression task)."""
    results: dict[str, list[dict]] = {}
    table = {**ROWS, **(extra_rows or {})}
    for name in [*rows, *(extra_rows or {})]:
        for seed in seeds:
            cfg = base_config(manifest, cache, seed=seed, image_size=image_size, max_epochs=epochs)
            adjust(cfg)
            table[name](cfg)
            slug = "".join(c if c.isalnum() else "_" for c in f"{label}-{name}-s{seed}")
            out = train_run(cfg, runs / slug, metric=metric)
            entry = {"seed": seed, "accuracy": out.accuracy, **record(out), "epochs": out.epochs, "seconds": out.seconds,
                     "epoch_seconds": statistics.fmean(out.epoch_seconds) if out.epoch_seconds else None,
                     "final_train_loss": out.final_train_loss,
                     "cache_computed": (out.cache or {}).get("computed", 0),
                     "cache_images_per_second": (out.cache or {}).get("images_per_second", 0.0), "curve": out.curve}
            results.setdefault(name, []).append(entry)
            extra = "".join(f"  {k} {v:.3f}" for k, v in entry.items() if k not in ("seed", "accuracy", "epochs", "seconds", "epoch_seconds", "final_train_loss", "cache_images_per_second") and isinstance(v, float))
            fit = f", final train loss {out.final_train_loss:.3f}" if out.final_train_loss is not None else ""
            print(f"  {label + ' ' if label else ''}{name:28s} seed {seed}: test {metric} {out.accuracy:.3f}{extra}"
                  f"  ({out.epochs} epochs{fit}, {out.seconds:.0f} s)", flush=True)
            if show_curves and out.curve.get("train_loss"):
                print(f"      per epoch: train loss {' '.join(f'{v:.2f}' for v in out.curve['train_loss'])}; val {metric} "
                      f"{' '.join(f'{v:.2f}' for v in out.curve['val'])}", flush=True)
    return results


def finetune_epoch_notes(results: dict[str, list[dict]], rows: dict[str, Callable]) -> list[str]:
    """One line per fine-tuned row: its mean seconds per epoch on the cached maps."""
    notes = []
    for name in rows:
        seconds = [r["epoch_seconds"] for r in results.get(name, []) if r.get("epoch_seconds")]
        if seconds:
            notes.append(f"{name}: {statistics.fmean(seconds):.1f} s per epoch on the cached maps (mean over runs; the "
                         "first such run's 's / run' includes computing the maps)")
    return notes


def cache_note(results: dict) -> str:
    """Which runs filled the feature cache and how fast: their 's / run' includes it."""
    fills = [(name, r) for name, runs in results.items() for r in (runs if isinstance(runs, list) else []) if r.get("cache_computed")]
    if not fills:
        return ""
    images = sum(r["cache_computed"] for _, r in fills)
    seconds = sum(r["cache_computed"] / r["cache_images_per_second"] for _, r in fills if r.get("cache_images_per_second"))
    rows = sorted({name for name, _ in fills}, key=list(results).index)
    return (f"feature cache: {images} images computed once ({seconds:.0f} s, {images / max(seconds, 1e-9):.0f} img/s), "
            f"inside the first run(s) of: {', '.join(rows)}; every other run read it")
