"""A training run writes report.html for its evaluation splits, and it renders in a real browser."""

import json
import re

from seqvision.cli import main
from seqvision.workflows import train_and_evaluate as train

from conftest import fast_config, make_folder_dataset
from test_evaluation_html_report import _chromium


def test_training_run_report_renders_with_curves_errors_and_attention(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "data", per_label=6, lengths=(2, 3, 4))
    cfg = fast_config(data, max_epochs=3)
    cfg.model.head = "attention"
    cfg.data.test_fraction = 0.3
    result = train(cfg, tmp_path / "run", progress=False)
    page = tmp_path / "run" / "test" / "report.html"
    metrics = json.loads((tmp_path / "run" / "test" / "metrics.json").read_text())
    dom = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    check = re.search(r'id="image-check"[^>]*', dom)
    total = int(re.search(r'data-total="(\d+)"', check.group(0)).group(1))
    loaded = int(re.search(r'data-loaded="(\d+)"', check.group(0)).group(1))
    assert total >= 3 and loaded == total  # confusion matrix + loss and metric curves + thumbnails, all decoded
    tables = ["metrics", "per_class", "confusion", "attention"] + (["errors"] if metrics["accuracy"] < 1 else [])
    for table in tables:
        body = re.search(rf'<table class="{table}">(.*?)</table>', dom, re.S)
        assert body and body.group(1).count("<tr>") >= 2, table
    assert result.test_metrics["accuracy"] == metrics["accuracy"]

    (tmp_path / "run" / "test" / "report.html").unlink()
    assert main(["report", str(tmp_path / "run")]) == 0  # rebuilt from the run folder alone
    assert page.exists() and "report.html" in capsys.readouterr().out
