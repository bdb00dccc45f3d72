"""``seqvision compare``: several runs side by side, read from the files their folders already hold.

A run is a folder written by ``seqvision train`` (also ``tune``'s ``best-N/``: config.yaml, val/ and
test/metrics.json, logs/version_*/metrics.csv, training.json, best.ckpt) or by ``seqvision evaluate
--out`` (metrics.json, and evaluation.json naming the checkpoint and the split it measured). Nothing is
trained or evaluated again: the checkpoint is read for its task, class names, options and size only.

Each figure keeps the split it was measured on: an evaluation of ``--split val`` is a val figure, one
without ``--split`` scores every sample (training samples included) and is an ``all`` figure, which is
shown but never ranked against another run's held-out test figure.

Runs of different tasks or class sets are refused: their figures do not measure the same thing.
The page and the markdown are written by :mod:`seqvision.evaluation.compare_report`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqvision.errors import ConfigError, SeqVisionError
from seqvision.evaluation.html_report import metrics_logs, read_history
from seqvision.models.checkpoint import read_checkpoint
from seqvision.tasks import TargetSpec, task_of

VARIANTS = ("shuffled", "reversed", "middle")  # the diagnostics' figures compared (mirrored: full mode only)
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")  # BatchNorm's state_dict entries that are not parameters


@dataclass
class RunRecord:
    """What one run folder says about its run."""

    name: str  # the folder as given on the command line
    folder: Path
    kind: str  # "train" (train, tune's best-N) or "evaluation" (evaluate --out)
    spec: TargetSpec
    metrics: dict[str, dict]  # split -> metrics.json ("val", "test"; an evaluation folder's: its --split, or "all")
    config: dict[str, Any] = field(default_factory=dict)  # the resolved config, "section.field" -> value
    history: list[dict[str, str]] = field(default_factory=list)  # the CSV log's rows, oldest first
    epochs: int | None = None  # epochs trained
    best_epoch: int | None = None  # the epoch best.ckpt holds (from 1)
    seconds: float | None = None  # training time
    parameters: int | None = None  # the model's parameters (not its buffers), from the checkpoint
    checkpoint_mb: float | None = None
    evaluated: str = ""  # an evaluation folder: the data (and split) it measured

    @property
    def report_split(self) -> str | None:
        """The split whose diagnostics, groups and classes are shown: test, else val (as ``seqvision report``),
        else the one an evaluation measured."""
        return next((s for s in ("test", "val") if s in self.metrics), next(iter(self.metrics), None))


def load_run(path: str | Path) -> RunRecord:
    """Read a run folder; a folder that is neither a run nor an evaluation is refused, naming the fix."""
    folder = Path(path)
    if (folder / "config.yaml").is_file():
        return _train_run(str(path), folder)
    if (folder / "metrics.json").is_file():
        return _evaluation(str(path), folder)
    hint = ""
    if (folder / "study.db").is_file():
        hint = f" (a tune folder: compare its best run, {next(iter(sorted(folder.glob('best-*'))), folder / 'best-N')})"
    raise _not_a_run(path, hint)


def _not_a_run(path: str | Path, hint: str = "") -> ConfigError:
    return ConfigError(f"compare: {path} is not a run folder (config.yaml of seqvision train) nor an evaluation "
                       f"folder (metrics.json of seqvision evaluate --out){hint}")


def _train_run(name: str, folder: Path) -> RunRecord:
    metrics = {split: _json(folder / split / "metrics.json") for split in ("val", "test") if (folder / split / "metrics.json").is_file()}
    if not metrics:
        raise ConfigError(f"compare: {name} has no val/ or test/metrics.json (training did not finish); "
                          f"run seqvision report {name}, or leave it out")
    checkpoint = folder / "best.ckpt" if (folder / "best.ckpt").is_file() else folder / "last.ckpt"
    record = _with_checkpoint(name, folder, "train", metrics, checkpoint)
    record.history = _resumed_history(folder)
    training = _json(folder / "training.json") if (folder / "training.json").is_file() else {}
    record.seconds = training.get("seconds")
    record.epochs = training.get("epochs") or _epochs_logged(record.history)
    return record


def _evaluation(name: str, folder: Path) -> RunRecord:
    said = folder / "evaluation.json"
    if not said.is_file():
        raise ConfigError(f"compare: {name} does not name the checkpoint it evaluated (no evaluation.json: written by an "
                          f"older seqvision); evaluate it again with seqvision evaluate CHECKPOINT --data DATA --out {name}")
    info = _json(said)
    if not isinstance(info, dict) or not isinstance(info.get("checkpoint"), str):
        raise _not_a_run(name, f" (its evaluation.json names no checkpoint; evaluate it again with seqvision evaluate "
                               f"CHECKPOINT --data DATA --out {name})")
    split = info.get("split") or "all"  # no --split: every sample scored, training samples included
    record = _with_checkpoint(name, folder, "evaluation", {split: _json(folder / "metrics.json")}, Path(info["checkpoint"]))
    record.evaluated = str(info.get("data", "")) + (" (all samples)" if split == "all" else f" ({split} split)")
    return record


def _with_checkpoint(name: str, folder: Path, kind: str, metrics: dict[str, dict], checkpoint: Path) -> RunRecord:
    """The run's task, class names, options and size, from its checkpoint (read safely, never run)."""
    if not checkpoint.is_file():
        raise ConfigError(f"compare: {name}: its checkpoint {checkpoint} is missing; the run's task and classes are read from it")
    try:
        raw = read_checkpoint(checkpoint)
    except SeqVisionError as exc:
        raise ConfigError(f"compare: {name}: {exc}") from None
    meta = raw["seqvision"]
    # the count the checkpoint records; an older one's: its tensors less BatchNorm's statistics
    parameters = meta.get("parameters")
    if not isinstance(parameters, int):
        parameters = sum(t.numel() for k, t in raw["state_dict"].items() if hasattr(t, "numel") and not k.endswith(BUFFERS))
    config = {f"{section}.{key}": value for section, values in (meta.get("config") or {}).items() for key, value in values.items()}
    epoch = raw.get("epoch")
    return RunRecord(
        name=name, folder=folder, kind=kind, spec=TargetSpec.from_dict(meta["targets"]), metrics=metrics, config=config,
        best_epoch=epoch + 1 if isinstance(epoch, int) else None,
        parameters=parameters,
        checkpoint_mb=checkpoint.stat().st_size / 1e6,
    )


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"compare: cannot read {path}: {exc}") from None


def _resumed_history(folder: Path) -> list[dict[str, str]]:
    """The CSV log's rows, oldest first: version_0, version_1, ... in number order (version_10 after
    version_2). An epoch a resumed run trained again is kept from the later version only."""
    versions = [read_history([path])[0] for path in metrics_logs(folder)]
    rows: list[dict[str, str]] = []
    for i, version in enumerate(versions):
        later = {_epoch(row) for newer in versions[i + 1:] for row in newer} - {None}
        rows += [row for row in version if _epoch(row) not in later]
    return rows


def _epoch(row: dict[str, str]) -> int | None:
    try:
        return int(float(row["epoch"]))
    except (KeyError, TypeError, ValueError):
        return None


def _epochs_logged(history: list[dict[str, str]]) -> int | None:
    epochs = [e for e in map(_epoch, history) if e is not None]
    return max(epochs) + 1 if epochs else None


def load_runs(paths: list[str | Path]) -> list[RunRecord]:
    """Read each run folder and check that they measure the same thing: one task and one class set.
    Refused with one line naming the runs otherwise."""
    if len(paths) < 2:
        raise ConfigError("compare needs at least two run folders")
    runs = [load_run(path) for path in paths]
    kinds = {(r.spec.task, tuple(r.spec.class_names or r.spec.target_names)) for r in runs}
    if len(kinds) > 1:
        said = "; ".join(f"{r.name}: {r.spec.task} of {', '.join(r.spec.class_names or r.spec.target_names)}" for r in runs)
        what = "tasks" if len({task for task, _ in kinds}) > 1 else "class sets"
        raise ConfigError(f"compare: runs of different {what} ({said}); compare runs of one task and class set")
    return runs


# --- what the table and plots show ------------------------------------------------------------------


@dataclass
class Comparison:
    """The runs sorted by their headline figure, and what differs between them."""

    runs: list[RunRecord]
    metric: str  # the task's headline figure (accuracy, exact_match, mae, ...)
    lower_is_better: bool
    sorted_by: str  # the split sorted on: val when every run has it, else test
    options: dict[str, list[Any]]  # the options whose values differ, one value per run
    val_metric: str  # the per-epoch validation metric of the curves (val_acc, val_mae, ...)
    unranked: list[str] = field(default_factory=list)  # runs with no figure on sorted_by: last, in name order

    @property
    def splits(self) -> list[str]:
        """The splits the runs have figures on, one table column each: val, test, then the others (all)."""
        found = {s for r in self.runs for s in r.metrics}
        return [s for s in ("val", "test") if s in found] + sorted(found - {"val", "test"})


def compare(runs: list[RunRecord]) -> Comparison:
    """Sort ``runs`` best first on val when every run has it, else on test among the runs that have it
    (an evaluation of all samples, training ones included, is never ranked against a held-out test);
    runs without that figure come last. And find the options that differ (only those)."""
    kind = runs[0].spec.kind
    metric = kind.headline[0]
    split = "val" if all("val" in r.metrics for r in runs) else "test"
    sign = 1 if kind.lower_is_better else -1

    def key(run: RunRecord) -> tuple:
        value = run_figure(run, split, metric)
        return (value is None, sign * value if value is not None else 0.0, run.name)

    ordered = sorted(runs, key=key)
    unranked = [r.name for r in ordered if run_figure(r, split, metric) is None]
    names = sorted({k for r in runs for k in r.config})
    options = {k: [r.config.get(k) for r in ordered] for k in names}
    options = {k: v for k, v in options.items() if len({json.dumps(x, sort_keys=True, default=str) for x in v}) > 1}
    logged = [m for m in task_of(runs[0].spec).logged_metrics() if m.startswith("val_") and m != "val_loss"]
    return Comparison(ordered, metric, kind.lower_is_better, split, options, logged[0] if logged else "val_loss", unranked)


def run_figure(run: RunRecord, split: str, metric: str) -> Any:
    return run.metrics.get(split, {}).get(metric)


def table_rows(c: Comparison) -> tuple[list[str], list[list[str]]]:
    """The runs table as text cells: headline on each split (val, test, all: see :attr:`Comparison.splits`),
    diagnostics, worst group, epochs, time, size."""
    m = c.metric
    header = ["run", *(f"{s} {m}" for s in c.splits), *(f"{v} {m}" for v in VARIANTS), "worst group", "epochs (best)", "time",
              "parameters", "checkpoint"]
    rows = []
    for r in c.runs:
        shown = r.metrics.get(r.report_split or "", {})
        d = shown.get("diagnostics") or {}
        worst = ""
        if f"group_worst_{m}" in shown:
            group = next(iter(shown.get("per_group") or {}), "")
            worst = f"{shown[f'group_worst_{m}']:.4f} ({group})"
        epochs = " ".join(x for x in ("" if r.epochs is None else str(r.epochs), f"({r.best_epoch})" if r.best_epoch else "") if x)
        rows.append([
            r.name + (f" [evaluation: {r.evaluated}]" if r.kind == "evaluation" else ""),
            *(_num(run_figure(r, s, m)) for s in c.splits),
            *(_num((d.get(v) or {}).get(d.get("metric", m))) for v in VARIANTS),
            worst, epochs, "" if r.seconds is None else f"{r.seconds:.1f} s",
            "" if r.parameters is None else f"{r.parameters:,}", "" if r.checkpoint_mb is None else f"{r.checkpoint_mb:.1f} MB",
        ])
    return header, rows


def options_rows(c: Comparison) -> tuple[list[str], list[list[str]]]:
    """The options that differ: one row per option, one column per run (in the table's order)."""
    return ["option", *(r.name for r in c.runs)], [[k, *(_text(v) for v in values)] for k, values in c.options.items()]


def per_class_rows(c: Comparison) -> tuple[str, list[str], list[list[str]]]:
    """Per class F1 (per target: the headline error) of each run on its report split, side by side."""
    figure = "f1" if any("per_class" in r.metrics.get(r.report_split or "", {}) for r in c.runs) else c.metric
    names = c.runs[0].spec.class_names or c.runs[0].spec.target_names
    rows = []
    for name in names:
        cells = []
        for r in c.runs:
            shown = r.metrics.get(r.report_split or "", {})
            per = shown.get("per_class") or shown.get("per_target") or {}
            cells.append(_num((per.get(name) or {}).get(figure)))
        rows.append([name, *cells])
    return figure, ["class" if c.runs[0].spec.is_classes else "target", *(r.name for r in c.runs)], rows


def curves(c: Comparison) -> dict[str, list[tuple[str, list[float], list[float]]]]:
    """Per epoch, for each run: the mean training loss, and the validation metric (``c.val_metric``)."""
    train, val = [], []
    for r in c.runs:
        if not r.history:
            continue
        train.append((r.name, *_epoch_means(r.history, "train_loss")))
        val.append((r.name, *_epoch_means(r.history, c.val_metric)))
    return {"train_loss": train, c.val_metric: val}


def _epoch_means(rows: list[dict[str, str]], column: str) -> tuple[list[float], list[float]]:
    """``column``'s mean over each epoch's rows (the training loss is logged per step; a validation metric
    once per epoch), epochs numbered from 1."""
    sums: dict[int, list[float]] = {}
    for row in rows:
        epoch = _epoch(row)
        try:
            value = float(row[column])
        except (KeyError, TypeError, ValueError):
            continue
        if epoch is not None:
            sums.setdefault(epoch, []).append(value)
    epochs = sorted(sums)
    return [e + 1 for e in epochs], [sum(sums[e]) / len(sums[e]) for e in epochs]


def _num(value: Any) -> str:
    return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _text(value: Any) -> str:
    if value is None:
        return "-"
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)
