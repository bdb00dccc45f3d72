"""Evaluation outputs on disk: ``metrics.json`` and the confusion-matrix plot."""

from __future__ import annotations

import json
from pathlib import Path

from seqvision.io import atomic_write_text


def write_metrics(metrics: dict, out_dir: Path) -> Path:
    path = Path(out_dir) / "metrics.json"
    atomic_write_text(path, json.dumps(metrics, indent=2))
    return path


def confusion_matrix_png(matrix: list[list[int]], labels: list[str]) -> bytes:
    """A labelled confusion-matrix PNG (rows: true class, columns: predicted)."""
    import io

    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    k = len(labels)
    size = max(4.0, 0.6 * k + 2)
    # parse_math off: a class name with two "$" would otherwise be parsed (and fail) as TeX
    with matplotlib.rc_context({"text.parse_math": False}):
        fig, ax = plt.subplots(figsize=(size, size))
        try:
            ax.imshow(matrix, cmap="Blues")
            ax.set_xticks(range(k), [str(lab) for lab in labels], rotation=45, ha="right")
            ax.set_yticks(range(k), [str(lab) for lab in labels])
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            top = max((max(row) for row in matrix), default=0)
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, str(matrix[i][j]), ha="center", va="center", color="white" if matrix[i][j] > top / 2 else "black")
            fig.tight_layout()
            buffer = io.BytesIO()
            fig.savefig(buffer, dpi=100, format="png")
        finally:
            plt.close(fig)
    return buffer.getvalue()
