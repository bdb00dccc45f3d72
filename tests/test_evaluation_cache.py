"""evaluate and report with a frozen checkpoint read the feature cache the run trained on, as train's own
evaluation does; data the cache does not cover (or another precision) runs the CNN."""

from __future__ import annotations

import json

import pytest

from conftest import fast_config, make_folder_dataset, write_image
from seqvision.inference.predictor import Predictor
from seqvision.workflows import evaluate, report, train_and_evaluate


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("frozen")
    data = make_folder_dataset(root / "data", per_label=4)
    cfg = fast_config(data)
    cfg.model.freeze = True
    cfg.data.cache = str(root / "cache")
    cfg.data.test_fraction = 0.25
    cfg.data.feature_precision = "32"
    return train_and_evaluate(cfg, root / "run", progress=False), data


def test_evaluate_and_report_of_a_frozen_run_read_its_cache(frozen_run, tmp_path, monkeypatch):
    result, data = frozen_run
    predictor = Predictor.load(result.best_checkpoint, precision="32")
    assert predictor.cached_store(result.splits["test"]) is not None

    def no_cnn(self):
        raise AssertionError("the CNN ran although the cache holds every feature")

    monkeypatch.setattr(Predictor, "_inference_encoder", no_cnn)
    again = report(result.out_dir, diagnostics="fast")
    assert again.metrics["accuracy"] == result.test_metrics["accuracy"]
    ev = evaluate(result.best_checkpoint, data, tmp_path / "ev", precision="32", diagnostics="fast")
    assert ev.metrics["num_samples"] == 8
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["accuracy"] == ev.metrics["accuracy"]


def test_data_the_cache_lacks_or_another_precision_runs_the_cnn(frozen_run, tmp_path):
    result, data = frozen_run
    predictor = Predictor.load(result.best_checkpoint, precision="32")
    new = write_image(tmp_path / "extra" / "left" / "s9" / "f0.png", 40)
    from seqvision.data.discovery import discover

    samples = discover(tmp_path / "extra")
    assert predictor.cached_store(samples) is None and new.exists()
    assert Predictor.load(result.best_checkpoint, precision="bf16").cached_store(result.splits["test"]) is None
    ev = evaluate(result.best_checkpoint, tmp_path / "extra", precision="32", diagnostics="off")
    assert ev.metrics["num_samples"] == 1
