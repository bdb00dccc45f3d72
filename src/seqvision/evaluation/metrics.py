"""Metrics from collected outputs and targets (torchmetrics' functional forms)."""

from __future__ import annotations

import torch
from torchmetrics.functional import classification as C


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, class_names: list[str]) -> dict:
    """Accuracy, top-k, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    Args:
        logits: ``(B, K)``; targets: ``(B,)`` class indices.
    """
    k = len(class_names)
    preds = logits.argmax(dim=-1)
    out: dict = {
        "num_samples": int(targets.numel()),
        "accuracy": float((preds == targets).float().mean()) if targets.numel() else float("nan"),
    }
    for top in (2, 3, 5):
        if top < k:
            out[f"top{top}_accuracy"] = float(
                C.multiclass_accuracy(logits, targets, num_classes=k, top_k=top, average="micro")
            )
    out["macro_f1"] = float(C.multiclass_f1_score(preds, targets, num_classes=k, average="macro"))
    precision = C.multiclass_precision(preds, targets, num_classes=k, average="none")
    recall = C.multiclass_recall(preds, targets, num_classes=k, average="none")
    f1 = C.multiclass_f1_score(preds, targets, num_classes=k, average="none")
    support = torch.bincount(targets, minlength=k)
    out["per_class"] = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
        for i, name in enumerate(class_names)
    }
    matrix = C.multiclass_confusion_matrix(preds, targets, num_classes=k)  # rows: true, columns: predicted
    out["confusion_matrix"] = {"labels": list(class_names), "matrix": matrix.tolist()}
    return out


def regression_metrics(preds: torch.Tensor, targets: torch.Tensor, target_names: list[str]) -> dict:
    """MAE, RMSE and R^2 per target and averaged over targets. ``preds``, ``targets``: ``(B, K)``."""
    preds, targets = preds.double(), targets.double()
    err = preds - targets
    mae = err.abs().mean(dim=0)
    rmse = err.pow(2).mean(dim=0).sqrt()
    total = (targets - targets.mean(dim=0)).pow(2).sum(dim=0)
    r2 = 1 - err.pow(2).sum(dim=0) / total.clamp_min(1e-12)
    per_target = {
        name: {"mae": float(mae[i]), "rmse": float(rmse[i]), "r2": float(r2[i])} for i, name in enumerate(target_names)
    }
    return {
        "num_samples": int(targets.shape[0]),
        "mae": float(mae.mean()),
        "rmse": float(rmse.mean()),
        "r2": float(r2.mean()),
        "per_target": per_target,
    }


def headline(metrics: dict) -> str:
    """A one-line summary for the terminal."""
    keys = ("accuracy", "top2_accuracy", "macro_f1") if "accuracy" in metrics else ("mae", "rmse", "r2")
    parts = [f"{k}={metrics[k]:.4f}" for k in keys if k in metrics]
    return f"{metrics['num_samples']} samples: " + ", ".join(parts)
