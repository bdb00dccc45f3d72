"""One plain line per epoch (metrics and time), for logs written to a file or a pipe.

A progress bar redraws itself thousands of times with carriage returns: fine on a terminal, unreadable
in a log file. Where there is no terminal the CLI turns the bar off and adds this callback instead.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import lightning as L


class EpochLog(L.Callback):
    """Prints ``epoch 3/20: train_loss 0.412, val_loss 0.380, val_acc 0.913 (2.1 s)`` after each epoch."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items(), key=lambda kv: (not kv[0].startswith("train"), kv[0])))
        line = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {shown} ({time.perf_counter() - self._start:.1f} s)"
        print(line, file=self.stream or sys.stdout, flush=True)
