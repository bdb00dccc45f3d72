"""Per-group metrics: the evaluation at the end of training, `evaluate --per-group`, and the report."""

import json

import pytest

from seqvision.cli import main
from seqvision.workflows import train_and_evaluate as train

from conftest import fast_config, write_image


def _grouped_manifest(tmp_path, sources: int = 6, clips: int = 3):
    """Clips of `sources` recordings; brightness tells the label; the group column names the recording."""
    rows = ["sample_id,label,path,index,group"]
    for v in range(sources):
        label = "ab"[v % 2]
        for c in range(clips):
            for t in range(3):
                path = write_image(tmp_path / "img" / f"rec{v}_c{c}_{t}.png", 40 + 150 * (v % 2) + 5 * t)
                rows.append(f"rec{v}_c{c},{label},{path.relative_to(tmp_path)},{t},rec{v}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "m.csv"


@pytest.fixture(scope="module")
def grouped_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("grouped")
    manifest = _grouped_manifest(root)
    cfg = fast_config(manifest, max_epochs=2)
    cfg.data.val_fraction, cfg.data.test_fraction = 0.2, 0.2
    return manifest, train(cfg, root / "run", progress=False)


def test_training_reports_per_group_metrics_when_the_data_has_groups(grouped_run):
    manifest, result = grouped_run
    splits = json.loads((result.out_dir / "splits.json").read_text())
    test_groups = {splits["groups"][i] for i, split in splits["splits"].items() if split == "test"}
    per_group = result.test_metrics["per_group"]
    assert set(per_group) == test_groups and result.test_metrics["num_groups"] == len(test_groups)
    assert sum(g["num_samples"] for g in per_group.values()) == result.test_metrics["num_samples"]
    accuracies = [g["accuracy"] for g in per_group.values()]
    assert accuracies == sorted(accuracies)  # worst first
    assert result.test_metrics["group_mean_accuracy"] == pytest.approx(sum(accuracies) / len(accuracies))
    assert result.test_metrics["group_worst_accuracy"] == accuracies[0]
    html = (result.out_dir / "test" / "report.html").read_text()
    assert "Per group (worst first)" in html and all(group in html for group in test_groups)


def test_evaluate_per_group_through_the_cli(grouped_run, tmp_path, capsys):
    manifest, result = grouped_run
    ckpt = str(result.best_checkpoint)
    assert main(["evaluate", ckpt, "--data", str(manifest), "--out", str(tmp_path / "ev"), "--per-group"]) == 0
    assert "6 group(s): mean accuracy" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert set(metrics["per_group"]) == {f"rec{v}" for v in range(6)}
    assert all(g["num_samples"] == 3 for g in metrics["per_group"].values())
    # grouped by another column
    assert main(["evaluate", ckpt, "--data", str(manifest), "--group-by", "label"]) == 0
    assert "2 group(s): mean accuracy" in capsys.readouterr().out
    # no groups in the data: --per-group is a clear error, and nothing is written
    plain = manifest.parent / "plain.csv"
    plain.write_text("\n".join(line.rsplit(",", 1)[0] for line in manifest.read_text().splitlines()) + "\n")
    assert main(["evaluate", ckpt, "--data", str(plain), "--out", str(tmp_path / "ev2"), "--per-group"]) == 1
    assert "--per-group: no sample" in capsys.readouterr().err
    assert not (tmp_path / "ev2").exists()


def test_the_report_names_the_run(grouped_run):
    _, result = grouped_run
    html = (result.out_dir / "test" / "report.html").read_text()
    assert '<section id="run">' in html
    for fact in ("tiny_cnn, weights none, pool avg, fine-tuned", "lstm, hidden 8", "classification: 2 output(s)",
                 "the test split", "augmentation on", "16px crop", "torch "):
        assert fact in html, fact
