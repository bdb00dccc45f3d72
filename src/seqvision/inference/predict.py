"""``predict``: a checkpoint + inputs (sample folders, data roots, manifests) -> one row per sample."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch

from seqvision.data.discovery import discover_inputs
from seqvision.errors import ConfigError
from seqvision.inference.predictor import Predictor
from seqvision.io import atomic_write_text
from seqvision.runtime import inference_group


def predict(
    checkpoint: str | Path, inputs: list[str | Path], out: str | Path | None = None, *, batch_size: int = 8,
    num_workers: int = 0, on_bad_image: str | None = None, device: str | torch.device = "cpu", precision: str = "auto",
    chunk_size: int | None = None, runtime: str = "auto",
) -> tuple[list[dict], list[str]]:
    """Predict every sample found in ``inputs``; write CSV (or JSON, by extension) when ``out`` is given.

    Returns ``(rows, skipped)``: one dict per sample (``sample``, ``prediction``, one probability column
    per class or one value per regression target) and the bad images left out with ``on_bad_image='skip'``.
    ``precision`` is the CNN's: ``auto`` (bf16 where the hardware is fast at it), ``32`` or ``bf16``;
    ``runtime`` what runs its forward (``auto``: the fastest here, see :mod:`seqvision.features.runtimes`).
    ``chunk_size``: images per CNN pass and per loaded piece of a sample (default: the run's ``--chunk-size``, else chosen from the backbone, image size and free memory).
    """
    if out is not None and Path(out).suffix.lower() not in (".csv", ".json"):
        raise ConfigError(f"--out {out}: use a .csv or .json file name")
    predictor = Predictor.load(checkpoint, device=device, precision=precision, runtime=runtime)
    predictor.shard = inference_group()  # under torchrun: each process predicts its share, rank 0 writes
    if chunk_size:
        predictor.chunk_size = chunk_size
    samples = discover_inputs(inputs)
    preds = predictor.run(samples, batch_size=batch_size, num_workers=num_workers, on_bad_image=on_bad_image)
    rows = predictor.rows(preds)
    if out is not None and predictor.shard[0] == 0:
        write_rows(rows, Path(out))
    return rows, preds.skipped


def write_rows(rows: list[dict], path: Path) -> None:
    if path.suffix.lower() == ".json":
        atomic_write_text(path, json.dumps(rows, indent=1))
        return
    buffer = io.StringIO()
    fields = list(rows[0]) if rows else ["sample", "prediction"]
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
