"""Evaluation outputs on disk: ``metrics.json`` and the confusion-matrix plot."""

from __future__ import annotations

import json
from pathlib import Path

from seqvision.io import atomic_write, atomic_write_text


def write_metrics(metrics: dict, out_dir: Path) -> Path:
    path = Path(out_dir) / "metrics.json"
    atomic_write_text(path, json.dumps(metrics, indent=2))
    return path


def plot_confusion_matrix(matrix: list[list[int]], labels: list[str], path: Path) -> Path:
    """A labelled confusion-matrix PNG (rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    k = len(labels)
    size = max(4.0, 0.6 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    try:
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(k), labels, rotation=45, ha="right")
        ax.set_yticks(range(k), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        top = max((max(row) for row in matrix), default=0)
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(matrix[i][j]), ha="center", va="center", color="white" if matrix[i][j] > top / 2 else "black")
        fig.tight_layout()
        atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
    return Path(path)
