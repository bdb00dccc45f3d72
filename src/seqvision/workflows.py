"""The jobs the command line and the Python API share, each one whole: train and evaluate, evaluate,
report, predict, extract. They sit on top of every other module: training fits, evaluation measures,
inference predicts; a workflow is what strings them together for a user."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seqvision.config import RunConfig
from seqvision.evaluation.evaluate import evaluate, evaluate_samples, report
from seqvision.features.extract import extract
from seqvision.inference.predict import predict
from seqvision.inference.predictor import Predictor

if TYPE_CHECKING:
    from seqvision.training.fit import TrainResult

__all__ = ["train_and_evaluate", "evaluate", "report", "predict", "extract"]


def train_and_evaluate(
    cfg: RunConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True, callbacks: Sequence[Any] = (),
    epoch_log: bool = False,
) -> "TrainResult":
    """Train as ``cfg`` says (:func:`seqvision.training.fit.fit`), then evaluate the best checkpoint on the
    validation and test splits: ``val/`` and ``test/`` in ``out_dir`` (metrics.json, plots, report.html;
    per group when the data has groups; diagnostics as ``cfg.train.diagnostics`` says).

    ``resume=True`` continues from ``out_dir/last.ckpt`` with the saved split. ``callbacks``: more
    Lightning callbacks. ``progress``: progress bars (for a terminal); ``epoch_log``: one plain line per
    epoch (for log files).
    """
    from seqvision.training.fit import device_of, fit  # Lightning: only training loads it

    result = fit(cfg, out_dir, resume=resume, progress=progress, callbacks=callbacks, epoch_log=epoch_log)
    if not result.is_global_zero:  # one process of a distributed run reports
        return result
    # The CNN evaluates in the precision it trained in; a frozen one reads the features it trained on.
    predictor = Predictor.load(result.best_checkpoint, device=device_of(cfg), precision=cfg.cnn_precision())
    for split in ("val", "test"):
        samples = result.splits.get(split)
        if not samples:
            continue
        ev = evaluate_samples(
            predictor, samples, result.out_dir / split, batch_size=cfg.train.batch_size, num_workers=result.num_workers,
            on_bad_image=cfg.data.on_bad_image, source=f"the {split} split",
            history_csv=sorted(result.out_dir.glob("logs/version_*/metrics.csv")), store=result.store,
            per_group=any(s.group is not None for s in samples), diagnostics=cfg.train.diagnostics,
        )
        setattr(result, f"{split}_metrics", ev.metrics)
        result.reported.extend(m for m in ev.skipped if m not in result.reported)
    return result
