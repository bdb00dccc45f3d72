"""seqvision compare: runs of train and evaluate side by side (table, options that differ, curves, per-class
F1) as text, markdown and a self-contained page checked in Chromium; runs of other classes refused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import make_folder_dataset
from seqvision.cli import main
from seqvision.evaluation.compare import compare, load_runs
from test_evaluation_html_report import _chromium

FAST = ["--backbone", "tiny_cnn", "--weights", "none", "--image-size", "16", "--resize-size", "16", "--num-workers", "0",
        "--hidden-size", "8", "--batch-size", "4", "--lr", "0.01", "--patience", "0", "--seed", "0", "--accelerator", "cpu",
        "--val-fraction", "0.3", "--test-fraction", "0.3"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two train runs that differ in head and epochs, and an evaluation folder of the first, on folder data."""
    root = tmp_path_factory.mktemp("compare")
    data = make_folder_dataset(root / "data", per_label=4)
    lstm, mean, evaluated = root / "lstm", root / "mean", root / "eval-lstm"
    assert main(["train", "--data", str(data), "--out", str(lstm), "--max-epochs", "2", *FAST]) == 0
    assert main(["train", "--data", str(data), "--out", str(mean), "--max-epochs", "3", "--head", "mean", *FAST]) == 0
    assert main(["evaluate", str(lstm / "best.ckpt"), "--data", str(data), "--out", str(evaluated)]) == 0
    return {"data": data, "lstm": lstm, "mean": mean, "eval": evaluated, "root": root}


def _metric(folder: Path, split: str | None = None) -> float:
    return json.loads((folder / (f"{split}/metrics.json" if split else "metrics.json")).read_text())["accuracy"]


def test_compare_prints_the_runs_best_first_and_only_the_options_that_differ(runs, capsys):
    capsys.readouterr()
    assert main(["compare", str(runs["lstm"]), str(runs["mean"]), str(runs["eval"])]) == 0
    out = capsys.readouterr().out
    assert out.startswith("3 classification runs, sorted by test accuracy (highest first):")  # the evaluation has no val
    table, options = out.split("options that differ:")
    rows = [line for line in table.splitlines()[3:] if line.strip()]
    named = [next(k for k in ("eval", "lstm", "mean") if line.startswith(str(runs[k]))) for line in rows]
    expected = sorted(["lstm", "mean", "eval"], key=lambda k: (-_metric(runs[k], None if k == "eval" else "test"), str(runs[k])))
    assert named == expected
    lstm_row = rows[named.index("lstm")].split()
    assert f"{_metric(runs['lstm'], 'val'):.4f}" == lstm_row[1] and f"{_metric(runs['lstm'], 'test'):.4f}" == lstm_row[2]
    assert "2 (" in rows[named.index("lstm")] and "3 (" in rows[named.index("mean")]  # epochs trained (best)
    assert "[evaluation: " in rows[named.index("eval")]
    differing = [line.split()[0] for line in options.splitlines()[3:] if line.strip()]
    assert differing == ["model.head", "train.max_epochs"]  # the evaluation's model is the lstm run's: nothing else


def test_compare_sorts_errors_lowest_first_and_accuracies_highest_first(runs):
    records = load_runs([runs["lstm"], runs["mean"]])
    records[0].metrics["val"]["accuracy"], records[1].metrics["val"]["accuracy"] = 0.25, 0.75
    assert [r.name for r in compare(records).runs] == [str(runs["mean"]), str(runs["lstm"])]
    assert compare(records).sorted_by == "val"  # every run has val: the choice is made on validation


def test_compare_writes_markdown_and_a_self_contained_page(runs, tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", str(runs["lstm"]), str(runs["mean"]), str(runs["eval"]), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["compare.html", "compare.md", "train_loss.png", "val_acc.png"]
    md = (out / "compare.md").read_text()
    f1 = json.loads((runs["mean"] / "test" / "metrics.json").read_text())["per_class"]["left"]["f1"]
    assert "## Options that differ" in md and "| model.head |" in md and "![train_loss](train_loss.png)" in md
    left = next(line for line in md.splitlines() if line.startswith("| left |"))
    assert f"{f1:.4f}" in left and left.count("|") == 5  # one F1 per run, side by side
    html = (out / "compare.html").read_text()
    assert "http" not in html.replace("http-equiv", "") and 'src="data:image/png;base64,' in html  # nothing loaded from outside

    dom = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", (out / "compare.html").as_uri())
    check = re.search(r'id="image-check"[^>]*', dom).group(0)
    assert 'data-total="2"' in check and 'data-loaded="2"' in check  # both curves decoded
    for table in ("runs", "options", "per_class"):
        assert re.search(rf'<table class="{table}">.*?{re.escape(str(runs["mean"]))}', dom, re.S), table


def _relabelled(run: Path, folder: Path, **targets) -> Path:
    """A copy of ``run`` whose checkpoint says it learnt other targets (the weights, and their checksum, kept)."""
    import shutil

    import torch

    shutil.copytree(run, folder)
    raw = torch.load(folder / "best.ckpt", weights_only=True)
    raw["seqvision"]["targets"].update(targets)
    torch.save(raw, folder / "best.ckpt")
    return folder


def test_compare_refuses_runs_of_another_task_or_class_set_and_folders_that_are_not_runs(runs, tmp_path, capsys):
    classes = _relabelled(runs["lstm"], tmp_path / "up-down", class_names=["up", "down"])
    numbers = _relabelled(runs["lstm"], tmp_path / "speed", task="regression", class_names=[], target_names=["speed"])
    capsys.readouterr()
    assert main(["compare", str(runs["lstm"]), str(runs["mean"]), str(classes)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different class sets" in err and str(runs["lstm"]) in err and str(classes) in err
    assert "up, down" in err and "left, right" in err
    assert main(["compare", str(runs["lstm"]), str(numbers)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different tasks" in err and "regression of speed" in err
    assert main(["compare", str(runs["lstm"]), str(runs["data"])]) == 1
    assert "is not a run folder" in capsys.readouterr().err
    assert main(["compare", str(runs["lstm"])]) == 1
    assert "at least two" in capsys.readouterr().err
