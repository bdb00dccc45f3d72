"""Each task's metrics of collected outputs against targets (torchmetrics' functional forms)."""

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
    k = len(class_names)
    probs = logits.float().sigmoid()
    truth = targets > 0.5
    predicted = probs >= torch.tensor(thresholds)[None, :]
    ap = C.multilabel_average_precision(probs, truth.long(), num_labels=k, average="none")
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
