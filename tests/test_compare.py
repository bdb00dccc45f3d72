"""seqvision compare: runs of train and evaluate side by side (table, options that differ, curves, per-class
F1) as text, markdown and a self-contained page checked in Chromium; each figure on its own split (an
evaluation of all samples never ranked against test); runs of other classes refused."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import make_folder_dataset
from seqvision.cli import main
from seqvision.evaluation.compare import compare, curves, load_run, load_runs
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
    # the evaluation scored every sample (no --split), training ones included: shown, never ranked against test
    assert out.startswith(f"3 classification runs, sorted by test accuracy (highest first; last, not ranked (no test "
                          f"figure): {runs['eval']}):")
    table, options = out.split("options that differ:")
    header = table.splitlines()[1]
    assert "val accuracy  test accuracy  all accuracy" in header
    rows = [line for line in table.splitlines()[3:] if line.strip()]
    named = [next(k for k in ("eval", "lstm", "mean") if line.startswith(str(runs[k]))) for line in rows]
    expected = sorted(["lstm", "mean"], key=lambda k: (-_metric(runs[k], "test"), str(runs[k]))) + ["eval"]
    assert named == expected
    lstm_row = rows[named.index("lstm")].split()
    assert f"{_metric(runs['lstm'], 'val'):.4f}" == lstm_row[1] and f"{_metric(runs['lstm'], 'test'):.4f}" == lstm_row[2]
    assert "2 (" in rows[named.index("lstm")] and "3 (" in rows[named.index("mean")]  # epochs trained (best)
    eval_row = rows[named.index("eval")]
    assert f"[evaluation: {runs['data']} (all samples)]" in eval_row
    column = header.index("all accuracy")  # the evaluation's figure under "all", not under test
    assert eval_row[column:].split()[0] == f"{_metric(runs['eval']):.4f}" and not eval_row[header.index("test accuracy"):column].strip()
    differing = [line.split()[0] for line in options.splitlines()[3:] if line.strip()]
    assert differing == ["model.head", "train.max_epochs"]  # the evaluation's model is the lstm run's: nothing else


def _evaluation_of_split(runs: dict[str, Path], folder: Path, split: str | None) -> Path:
    """A copy of the evaluation folder that says it measured ``split`` (evaluate --split), or without
    evaluation.json's checkpoint (``split`` None)."""
    shutil.copytree(runs["eval"], folder)
    said = json.loads((folder / "evaluation.json").read_text())
    said = {**said, "split": split} if split else {"data": said["data"]}
    (folder / "evaluation.json").write_text(json.dumps(said))
    return folder


def test_compare_keeps_an_evaluations_split_and_ranks_val_with_val(runs, tmp_path, capsys):
    val = load_run(_evaluation_of_split(runs, tmp_path / "eval-val", "val"))
    assert list(val.metrics) == ["val"] and val.metrics["val"]["accuracy"] == _metric(runs["eval"])
    records = load_runs([runs["lstm"], runs["mean"], tmp_path / "eval-val"])
    records[0].metrics["val"]["accuracy"], records[1].metrics["val"]["accuracy"], records[2].metrics["val"]["accuracy"] = 0.5, 0.25, 0.75
    c = compare(records)
    assert c.sorted_by == "val" and not c.unranked  # every run has val: all ranked on it
    assert [r.name for r in c.runs] == [str(tmp_path / "eval-val"), str(runs["lstm"]), str(runs["mean"])]
    test = load_run(_evaluation_of_split(runs, tmp_path / "eval-test", "test"))
    c = compare([load_run(runs["lstm"]), test, load_run(runs["eval"])])
    assert c.sorted_by == "test" and c.unranked == [str(runs["eval"])]  # test ranked with test; all last

    _evaluation_of_split(runs, tmp_path / "broken", None)
    capsys.readouterr()
    assert main(["compare", str(runs["lstm"]), str(tmp_path / "broken")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a run folder" in err and "names no checkpoint" in err


def test_compare_sorts_errors_lowest_first_and_accuracies_highest_first(runs, tmp_path):
    records = load_runs([runs["lstm"], runs["mean"]])
    records[0].metrics["val"]["accuracy"], records[1].metrics["val"]["accuracy"] = 0.25, 0.75
    assert [r.name for r in compare(records).runs] == [str(runs["mean"]), str(runs["lstm"])]
    assert compare(records).sorted_by == "val"  # every run has val: the choice is made on validation

    speed = {"task": "regression", "class_names": [], "target_names": ["speed"]}
    records = load_runs([_relabelled(runs["lstm"], tmp_path / "a", **speed), _relabelled(runs["mean"], tmp_path / "b", **speed)])
    records[0].metrics = {"val": {"mae": 0.5}, "test": {"mae": 0.1}}
    records[1].metrics = {"val": {"mae": 0.25}, "test": {"mae": 0.9}}
    c = compare(records)
    assert (c.metric, c.lower_is_better, c.sorted_by) == ("mae", True, "val")
    assert [r.name for r in c.runs] == [str(tmp_path / "b"), str(tmp_path / "a")]  # the lower validation error first


def test_compare_counts_parameters_not_buffers(runs, tmp_path):
    import torch

    from seqvision.inference.predictor import Predictor

    model = Predictor.load(runs["lstm"] / "best.ckpt").model
    weights = sum(p.numel() for p in model.parameters())
    assert sum(b.numel() for b in model.buffers()) > 0  # the tiny CNN's BatchNorm statistics: not parameters
    assert load_run(runs["lstm"]).parameters == weights
    older = tmp_path / "older"  # a checkpoint from before the count was recorded
    shutil.copytree(runs["lstm"], older)
    raw = torch.load(older / "best.ckpt", weights_only=True)
    del raw["seqvision"]["parameters"]
    torch.save(raw, older / "best.ckpt")
    assert load_run(older).parameters == weights


def test_curves_of_a_resumed_run_keep_the_later_versions_epochs_in_number_order(runs, tmp_path):
    folder = tmp_path / "resumed"
    shutil.copytree(runs["lstm"], folder)
    shutil.rmtree(folder / "logs")
    logs = {  # version_0 stopped in epoch 1; version_2 redid it and stopped in epoch 2; version_10 redid that
        "version_0": [(0, 1.0, ""), (0, 1.0, "0.1"), (1, 9.0, ""), (1, 9.0, "0.9")],
        "version_2": [(1, 0.5, ""), (1, 0.5, "0.5"), (2, 7.0, "0.7")],
        "version_10": [(2, 0.25, ""), (2, 0.25, "0.6")],
    }
    for version, rows in logs.items():
        (folder / "logs" / version).mkdir(parents=True)
        lines = ["epoch,step,train_loss,val_acc"] + [f"{e},{i},{loss},{acc}" for i, (e, loss, acc) in enumerate(rows)]
        (folder / "logs" / version / "metrics.csv").write_text("\n".join(lines) + "\n")
    c = compare([load_run(folder), load_run(runs["mean"])])
    drawn = {name: {run: (xs, ys) for run, xs, ys in lines} for name, lines in curves(c).items()}
    assert drawn["train_loss"][str(folder)] == ([1, 2, 3], [1.0, 0.5, 0.25])
    assert drawn["val_acc"][str(folder)] == ([1, 2, 3], [0.1, 0.5, 0.6])


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


def test_an_evaluation_writes_down_a_data_url_without_its_credentials(runs, tmp_path, monkeypatch):
    import seqvision.evaluation.evaluate as evaluation

    real = evaluation.discover  # the URL's samples: the folder data's (no network in tests)
    monkeypatch.setattr(evaluation, "discover", lambda data, **kw: real(runs["data"], **kw))
    out = tmp_path / "ev"
    evaluation.evaluate(runs["lstm"] / "best.ckpt", "https://user:tok3n-secret@host/clips?sig=s1g-secret", out, diagnostics="off")
    assert json.loads((out / "evaluation.json").read_text())["data"] == "https://user@host/clips"
    for path in out.iterdir():  # evaluation.json, metrics.json, report.html, the plots
        assert b"tok3n-secret" not in path.read_bytes() and b"s1g-secret" not in path.read_bytes(), path
