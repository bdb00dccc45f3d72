"""Metrics from collected outputs and targets (torchmetrics' functional forms)."""

from __future__ import annotations

import torch
from torchmetrics.functional import classification as C


# each task's headline figures, the first one first (per-group summaries and diagnostics use it)
HEADLINE_METRICS = {
    "classification": ("accuracy", "macro_f1"), "frame_classification": ("accuracy", "macro_f1"),
    "multilabel": ("exact_match", "micro_f1"), "regression": ("mae", "rmse"), "frame_regression": ("mae", "rmse"),
}


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
    if "mAP" in metrics:
        keys = ("mAP", "macro_f1", "micro_f1")
    else:
        keys = ("accuracy", "top2_accuracy", "macro_f1") if "accuracy" in metrics else ("mae", "rmse", "r2")
    parts = [f"{k}={metrics[k]:.4f}" for k in keys if k in metrics]
    images = f" ({metrics['num_images']} images)" if "num_images" in metrics else ""
    groups = ""
    if "num_groups" in metrics:  # per-group evaluation: the mean over groups and the worst group
        key = next(k.removeprefix("group_mean_") for k in metrics if k.startswith("group_mean_"))
        worst = next(iter(metrics["per_group"]))
        groups = (f"; {metrics['num_groups']} group(s): mean {key} {metrics['group_mean_' + key]:.4f}, "
                  f"worst {metrics['group_worst_' + key]:.4f} ({worst})")
    return f"{metrics['num_samples']} samples{images}: " + ", ".join(parts) + groups


def best_thresholds(probs: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Per label, the probability threshold with the best F1 on ``probs (B, K)`` vs multi-hot targets
    (0.5 for a label with no positive example, where F1 cannot choose)."""
    out = []
    candidates = torch.linspace(0.05, 0.95, 19)
    for k in range(probs.shape[1]):
        p, t = probs[:, k], targets[:, k] > 0.5
        if not t.any():
            out.append(0.5)
            continue
        predicted = p[None, :] >= candidates[:, None]  # (19, B)
        tp = (predicted & t).sum(1).float()
        f1 = 2 * tp / (predicted.sum(1) + t.sum()).clamp_min(1)
        out.append(float(candidates[int(f1.argmax())]))
    return out


def multilabel_metrics(logits: torch.Tensor, targets: torch.Tensor, class_names: list[str], thresholds: list[float]) -> dict:
    """mAP (macro average precision), per-label AP / precision / recall / F1 at its threshold, micro and
    macro F1, and exact-match accuracy. ``logits``, ``targets``: ``(B, K)``."""
    from torchmetrics.functional.classification import multilabel_average_precision

    k = len(class_names)
    probs = logits.float().sigmoid()
    truth = targets > 0.5
    predicted = probs >= torch.tensor(thresholds)[None, :]
    ap = multilabel_average_precision(probs, truth.long(), num_labels=k, average="none")
    tp = (predicted & truth).sum(0).float()
    precision = tp / predicted.sum(0).clamp_min(1)
    recall = tp / truth.sum(0).clamp_min(1)
    f1 = 2 * tp / (predicted.sum(0) + truth.sum(0)).clamp_min(1)
    has_positive = truth.any(0)
    micro = 2 * tp.sum() / (predicted.sum() + truth.sum()).clamp_min(1)
    return {
        "num_samples": int(targets.shape[0]),
        "mAP": float(ap[has_positive].mean()) if has_positive.any() else float("nan"),
        "macro_f1": float(f1.mean()),
        "micro_f1": float(micro),
        "exact_match": float((predicted == truth).all(1).float().mean()),
        "per_label": {
            name: {
                "ap": float(ap[i]) if has_positive[i] else None, "precision": float(precision[i]),
                "recall": float(recall[i]), "f1": float(f1[i]), "threshold": thresholds[i], "support": int(truth[:, i].sum()),
            }
            for i, name in enumerate(class_names)
        },
    }
