"""Order and invariance diagnostics: shuffled, reversed, middle-image and mirrored variants of each sample."""

import json

import pytest

import seqvision.inference.predictor as predictor_module
from seqvision.evaluation.evaluate import evaluate
from seqvision.workflows import train_and_evaluate as train

from conftest import fast_config
from test_training import _write_motion_dataset


def _run(root, head: str):
    data = root / "data"
    if not data.exists():
        _write_motion_dataset(data)
    cfg = fast_config(data, max_epochs=8, batch_size=8, lr=5e-3, backbone_lr=5e-3)
    cfg.data.val_fraction, cfg.data.test_fraction = 0.2, 0.25
    cfg.model.head = head
    return data, train(cfg, root / head, progress=False)


@pytest.fixture(scope="module")
def direction(tmp_path_factory):
    """A square moving left or right: order AND left/right are the label (an LSTM learns it)."""
    return _run(tmp_path_factory.mktemp("direction"), "lstm")


@pytest.mark.slow
def test_an_order_task_shows_a_large_shuffle_and_mirror_effect(direction):
    _, result = direction
    d = result.test_metrics["diagnostics"]
    assert d["mode"] == "full" and d["normal"] == result.test_metrics["accuracy"] >= 0.85
    assert d["reversed"]["accuracy"] <= 0.3 and d["reversed"]["changed"] >= 0.7  # time reversed: the other direction
    assert d["shuffled"]["accuracy"] <= d["normal"] - 0.2 and d["shuffled"]["draws"] == 3
    assert d["mirrored"]["changed"] >= 0.5  # left/right is the label: a mirror flips most predictions
    text = " | ".join(d["findings"])
    assert "order matters" in text and "direction of time matters" in text and "keep --hflip off" in text
    saved = json.loads((result.out_dir / "test" / "metrics.json").read_text())["diagnostics"]
    assert saved["findings"] == d["findings"]
    html = (result.out_dir / "test" / "report.html").read_text()
    assert 'id="diagnostics"' in html and "order matters" in html


def test_an_order_free_head_shows_no_shuffle_effect(tmp_path):
    _, result = _run(tmp_path, "mean")
    d = result.test_metrics["diagnostics"]
    assert d["shuffled"]["changed"] == 0 and d["reversed"]["changed"] == 0  # the mean of a set ignores its order
    assert d["shuffled"]["accuracy"] == d["normal"]
    assert any(f.startswith("order is ignored") for f in d["findings"])


@pytest.mark.parametrize("mode, passes", [("off", 1), ("fast", 1), ("full", 2)])
def test_variants_cost_no_extra_cnn_pass_except_the_mirror(direction, mode, passes, monkeypatch):
    data, result = direction
    real = predictor_module.encode_batch
    images = []

    def counted(net, batch, dtype):
        images.append(len(batch))
        return real(net, batch, dtype)

    monkeypatch.setattr(predictor_module, "encode_batch", counted)
    ev = evaluate(result.best_checkpoint, data, diagnostics=mode)
    samples = sum(1 for _ in data.rglob("f0.png"))  # one first frame per sample
    total = sum(1 for _ in data.rglob("*.png"))  # every image of every sample (uniform sampling: all frames)
    assert ev.metrics["num_samples"] == samples and sum(images) == passes * total
    assert ("diagnostics" in ev.metrics) == (mode != "off")
    if mode == "fast":
        assert "mirrored" not in ev.metrics["diagnostics"]


def test_findings_follow_the_numbers_and_their_noise():
    from seqvision.evaluation.diagnostics import findings

    def d(shuffled, changed, middle, mirrored, mirror_changed, normal=0.97):
        return {"metric": "accuracy", "lower_is_better": False, "change": "changed", "normal": normal, "shuffled": {"accuracy": shuffled, "changed": changed},
                "reversed": {"accuracy": normal, "changed": 0.0}, "middle": {"accuracy": middle, "changed": 0.1},
                "mirrored": {"accuracy": mirrored, "changed": mirror_changed}}

    said = findings(d(0.52, 0.48, 0.60, 0.50, 0.48), hflip=False, n=400)
    assert said[0] == "order matters: accuracy 0.97 -> 0.52 when each sample's images are shuffled (changes 48% of predictions)"
    assert "the sequence adds to one image: accuracy 0.60" in said[1]
    assert said[2].startswith("mirroring changes 48% of predictions") and said[2].endswith("keep --hflip off")
    said = findings(d(0.97, 0.01, 0.96, 0.97, 0.0), hflip=False, n=400)
    assert said[0].startswith("order is ignored: shuffling changes 1% of predictions")
    assert said[1].startswith("one image does about as well: accuracy 0.96")
    assert said[2] == "mirroring changes 0% of predictions: left/right does not matter here; --hflip may help as augmentation"
    # 2 of 36 predictions: within the noise of so few samples, neither "matters" nor "ignored"
    said = findings(d(0.92, 0.06, 0.90, 0.92, 0.06, normal=0.97), hflip=True, n=36)
    assert "within noise" in said[0] and "within noise" in said[2]


def test_findings_ask_the_task_whether_lower_is_better():
    """An error metric other than "mae" (a task whose headline is the RMSE): higher is worse, so a shuffle
    that raises it matters, and the change is a size, not a share of predictions."""
    from seqvision.evaluation.diagnostics import findings
    from seqvision.tasks.kinds import Regression

    class RmseFirst(Regression):
        headline = ("rmse", "mae")

    d = {"metric": RmseFirst.headline[0], "lower_is_better": RmseFirst.lower_is_better, "change": "mean_abs_change",
         "normal": 0.20, "shuffled": {"rmse": 0.50, "mean_abs_change": 0.3}, "reversed": {"rmse": 0.20, "mean_abs_change": 0.0},
         "middle": {"rmse": 0.21, "mean_abs_change": 0.05}}
    said = findings(d, hflip=False, n=400)
    assert said[0] == "order matters: rmse 0.20 -> 0.50 when each sample's images are shuffled (moves predictions by 0.3 on average)"
    assert said[1] == "one image does about as well: rmse 0.21 from the middle image alone, 0.20 from all"
    d["middle"]["rmse"] = 0.40  # the middle image alone errs twice as much: the sequence adds to it
    assert findings(d, hflip=False, n=400)[1].startswith("the sequence adds to one image: rmse 0.40")


def test_auto_mirrors_only_small_splits():
    from seqvision.errors import ConfigError
    from seqvision.evaluation.diagnostics import FULL_UP_TO_IMAGES, resolve_mode

    assert resolve_mode("auto", FULL_UP_TO_IMAGES) == "full" and resolve_mode("auto", FULL_UP_TO_IMAGES + 1) == "fast"
    assert resolve_mode("auto") == "auto" and resolve_mode("off", 10) == "off" and resolve_mode("full", 10**6) == "full"
    with pytest.raises(ConfigError, match="--diagnostics 'some'"):
        resolve_mode("some")


def test_a_mirrored_pass_that_reads_other_images_is_left_out(direction, monkeypatch):
    from seqvision.inference.predictor import Predictor

    data, result = direction
    real = Predictor.run

    def drop_one_when_mirrored(self, samples, **kwargs):  # as if a file changed between the passes
        return real(self, samples[1:] if kwargs.get("mirror") else samples, **kwargs)

    monkeypatch.setattr(Predictor, "run", drop_one_when_mirrored)
    d = evaluate(result.best_checkpoint, data, diagnostics="full").metrics["diagnostics"]
    assert "mirrored" not in d and d["findings"][-1].startswith("mirrored variant left out")
