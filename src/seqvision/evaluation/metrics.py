"""The one-line summary of a metrics dict for the terminal. The metrics themselves are each task's
(:mod:`seqvision.tasks`)."""

from __future__ import annotations


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
