"""``OUT/report.html`` of a tune: the trials, the optimisation history and each option's importance (plots
embedded as PNG), next to the best model's test metrics. One self-contained file, no script."""

from __future__ import annotations

import base64
import io
import warnings
from html import escape
from pathlib import Path

from seqvision.io import atomic_write_text


def write_tune_report(study, path: Path, *, metric: str, best_run: Path, test_metrics: dict | None,
                      retrain_command: str | None = None, failures: str | None = None) -> Path:
    """Write the report of ``study`` to ``path``. ``retrain_command``: the best was not trained again
    (--timeout), this command does it. ``failures``: the failed trials by choice, one line."""
    from seqvision.tuning.failures import finished
    from seqvision.tuning.motion import is_motion

    done = [t for t in study.trials if finished(t)]
    best = study.best_trial
    motion = sum(map(is_motion, done))
    kinds = (f" ({motion} motion trials: the CNN's last stages fine-tuned with a temporal shift on cached maps; the "
             "others, heads on frozen features)" if motion else "")
    importances = _importances(study)
    if retrain_command:
        again = (f"--timeout left no time to train it again: <code>{escape(retrain_command)}</code> does, and "
                 "evaluates it once on the test split, which no trial saw.</p>")
    else:
        again = (f"it was trained again in <code>{escape(best_run.name)}</code> and evaluated once on the test split, "
                 "which no trial saw.</p>")
    parts = [
        f"<h1>seqvision tune: {len(done)} trials, {metric} {'max' if study.direction.name == 'MAXIMIZE' else 'min'}imized</h1>",
        f"<p>{len(done)} trials{kinds}.</p>" if kinds else "",
        f"<p>Best: trial {best.number + 1}{' (a motion trial)' if is_motion(best) else ''}, {metric} <b>{best.value:.4f}</b> on "
        "the validation split. "
        f"Reproduce it with <code>seqvision train --config best_config.yaml --out RUN</code>; " + again,
        _metrics_table(test_metrics, retrained=not retrain_command),
        "<h2>Failures</h2>",
        f"<p>{escape(failures)}. An excluded value failed in every trial that drew it and was not drawn again; a "
        "draw of it is listed as skipped.</p>" if failures else "<p>No trial failed.</p>",
        "<h2>Optimisation history</h2>", _plot(_history, study),
        "<h2>Importance of each option</h2>",
        "<p>PED-ANOVA (Optuna): how much each option's value separates the best 10% of completed trials from the "
        "rest. With few trials these numbers are rough.</p>",
        _importance_table(importances),
        "<h2>Trials</h2>", _trials_table(study, metric),
    ]
    html = ("<!doctype html><html><head><meta charset='utf-8'><title>seqvision tune</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}img{max-width:100%}</style></head><body>"
            + "\n".join(parts) + "</body></html>")
    atomic_write_text(path, html)
    return path


def _metrics_table(metrics: dict | None, *, retrained: bool = True) -> str:
    if not retrained:
        return "<p>Not trained again: no test metrics yet.</p>"
    if not metrics:
        return "<p>No test split: the best model was evaluated on validation only.</p>"
    rows = "".join(f"<tr><td>{escape(k)}</td><td>{v:.4f}</td></tr>" for k, v in metrics.items() if isinstance(v, (int, float)))
    return f"<h2>Best model on the test split</h2><table>{rows}</table>"


def _importances(study) -> dict[str, float]:
    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (RuntimeError, ValueError):  # too few completed trials, or no option varied
        return {}


def _importance_table(importances: dict[str, float]) -> str:
    if not importances:
        return "<p>Not enough completed trials with varied options to estimate importances.</p>"
    rows = "".join(
        f"<tr><td>{escape(k)}</td><td>{v:.3f}</td><td><div style='background:#4a7;height:10px;width:{int(300 * v)}px'></div></td></tr>"
        for k, v in importances.items()
    )
    return f"<table><tr><th>option</th><th>importance</th><th></th></tr>{rows}</table>"


def _trials_table(study, metric: str) -> str:
    names = sorted({k for t in study.trials for k in t.params})
    head = "".join(f"<th>{escape(n)}</th>" for n in ["trial", "state", metric, "epochs", "seconds", *names])
    rows = []
    for t in study.trials:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        value = t.value if t.value is not None else (t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
        cells = [str(t.number + 1), _state(t), f"{value:.4f}" if value is not None else "",
                 str(max(t.intermediate_values)) if t.intermediate_values else "", f"{seconds:.1f}" if seconds else "",
                 *(_cell(t.params.get(n)) for n in names)]
        rows.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _state(trial) -> str:
    """completed, pruned, failed (and why), stopped by --timeout, or skipped (an excluded value drawn)."""
    if "skipped" in trial.user_attrs:
        return f"skipped ({trial.user_attrs['skipped']} excluded)"
    if trial.user_attrs.get("stopped") == "timeout":
        return "stopped (--timeout)"
    if trial.state.name == "FAIL" and "error" in trial.user_attrs:
        return f"failed: {trial.user_attrs['error']}"
    return trial.state.name.lower()


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _history(study, ax) -> None:
    """Each finished trial's value and the best so far (pruned trials: their last reported value, hollow)."""
    import optuna

    maximize = study.direction.name == "MAXIMIZE"
    best, xs, bests = None, [], []
    for t in study.trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            ax.plot(t.number + 1, t.value, "o", color="#1f77b4")
            best = t.value if best is None else (max(best, t.value) if maximize else min(best, t.value))
        elif t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values:
            ax.plot(t.number + 1, t.intermediate_values[max(t.intermediate_values)], "o", mfc="none", color="#999")
        if best is not None:
            xs.append(t.number + 1)
            bests.append(best)
    ax.step(xs, bests, where="post", color="#d62728", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation value (hollow: pruned)")
    ax.legend()


def _plot(draw, study) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    try:
        draw(study, ax)
        buffer = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=90)
    finally:
        plt.close(fig)
    return f'<img alt="optimisation history" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'
