import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from seqvision.config import resolve_config
from seqvision.errors import CheckpointError, ConfigError, DataError
from seqvision.evaluation.evaluate import evaluate
from seqvision.inference.predict import predict
from seqvision.inference.predictor import Predictor
from seqvision.workflows import train_and_evaluate as train

from conftest import fast_config, make_folder_dataset, write_image


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One trained run shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("run")
    data = make_folder_dataset(root / "data", per_label=4)
    result = train(fast_config(data, max_epochs=3), root / "out", progress=False)
    return data, result


def test_training_writes_a_complete_run_folder(trained):
    data, result = trained
    out = result.out_dir
    for name in ("best.ckpt", "last.ckpt", "config.yaml", "splits.json", "logs/version_0/metrics.csv", "val/metrics.json", "val/confusion_matrix.png"):
        assert (out / name).exists(), name
    assert list((out / "tensorboard").glob("version_0/events.out.tfevents.*"))
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["backbone"] == "tiny_cnn" and saved["train"]["max_epochs"] == 3
    metrics = json.loads((out / "val" / "metrics.json").read_text())
    assert {"accuracy", "macro_f1", "per_class", "confusion_matrix"} <= set(metrics)
    assert sum(map(sum, metrics["confusion_matrix"]["matrix"])) == metrics["num_samples"]


def test_checkpoint_carries_everything_and_loads_without_code(trained):
    _, result = trained
    raw = torch.load(result.best_checkpoint, weights_only=True)
    meta = raw["seqvision"]
    assert meta["targets"]["class_names"] == ["left", "right"]
    assert meta["preprocessing"]["image_size"] == 16
    assert {"seqvision", "torch", "torchvision", "lightning"} <= set(meta["versions"])


def test_predict_round_trip_in_a_fresh_process(trained, tmp_path):
    data, result = trained
    out = tmp_path / "preds.csv"
    code = (
        "from seqvision.inference.predict import predict; import sys;"
        f"predict({str(result.best_checkpoint)!r}, [{str(data)!r}], {str(out)!r})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    lines = out.read_text().splitlines()
    assert lines[0] == "sample,prediction,left,right"
    assert len(lines) == 1 + 8
    rows, _ = predict(result.best_checkpoint, [data])  # the same in this process
    first = lines[1].split(",")
    assert first[1] == rows[0]["prediction"] and abs(float(first[2]) - rows[0]["left"]) < 1e-5
    assert abs(sum(float(x) for x in first[2:]) - 1) < 1e-4


def test_predict_json_and_single_sample_folder(trained, tmp_path):
    data, result = trained
    rows, _ = predict(result.best_checkpoint, [data / "left" / "s0"], tmp_path / "p.json")
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved == rows and len(rows) == 1 and rows[0]["sample"] == str(data / "left" / "s0")


def test_evaluate_writes_metrics_and_plot(trained, tmp_path):
    data, result = trained
    ev = evaluate(result.best_checkpoint, data, tmp_path / "ev")
    assert ev.metrics["num_samples"] == 8
    assert (tmp_path / "ev" / "metrics.json").exists() and (tmp_path / "ev" / "confusion_matrix.png").stat().st_size > 1000


def test_evaluate_unknown_label_names_the_sample(trained, tmp_path):
    data, result = trained
    other = make_folder_dataset(tmp_path / "other", labels=("left", "sideways"), per_label=1)
    with pytest.raises(DataError, match=r"'sideways/s0'.*'sideways'.*not know"):
        evaluate(result.best_checkpoint, other)


def test_checkpoint_from_another_task_is_refused(trained, tmp_path):
    data, result = trained
    write_image(tmp_path / "i.png", 5)
    (tmp_path / "m.csv").write_text("sample_id,path,target_speed\na,i.png,1.5\n")
    with pytest.raises(CheckpointError, match="classification model.*holds numeric targets"):
        evaluate(result.best_checkpoint, tmp_path / "m.csv")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="not a seqvision checkpoint"):
        Predictor.load(tmp_path / "foreign.ckpt")


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    payload = _Payload()
    payload.marker = str(marker)
    with open(tmp_path / "evil.ckpt", "wb") as fh:
        pickle.dump({"seqvision": payload, "state_dict": {}}, fh)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        Predictor.load(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_truncated_checkpoint_is_detected(trained, tmp_path):
    _, result = trained
    (tmp_path / "cut.ckpt").write_bytes(result.best_checkpoint.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        Predictor.load(tmp_path / "cut.ckpt")


@pytest.mark.parametrize("cache", ["off", "auto"])  # off: the frozen CNN runs live in training mode
def test_frozen_backbone_parameters_and_batchnorm_buffers_do_not_move(tmp_path, cache):
    data = make_folder_dataset(tmp_path / "data")
    cfg = fast_config(data)
    cfg.model.freeze = True
    cfg.data.cache = cache
    result = train(cfg, tmp_path / "out", progress=False)

    import lightning as L

    L.seed_everything(0, verbose=False)  # the same initial weights as train()'s seed_everything(0)
    reference = cfg.model.build_model(2)
    trained_state = Predictor.load(result.last_checkpoint).model.encoder.state_dict()
    for key, value in reference.encoder.state_dict().items():
        assert torch.equal(value, trained_state[key]), key  # weights AND running_mean/var/num_batches
    head_before = reference.task_head.linear.weight
    head_after = Predictor.load(result.last_checkpoint).model.task_head.linear.weight
    assert not torch.equal(head_before, head_after)  # while the heads did learn


def test_fine_tuned_backbone_does_change(tmp_path):
    data = make_folder_dataset(tmp_path / "data")
    cfg = fast_config(data)
    import lightning as L


    L.seed_everything(0, verbose=False)
    reference = cfg.model.build_model(2)
    result = train(cfg, tmp_path / "out", progress=False)
    after = Predictor.load(result.last_checkpoint).model.encoder.state_dict()
    assert not torch.equal(reference.encoder.state_dict()["trunk.0.0.weight"], after["trunk.0.0.weight"])


def test_regression_from_a_manifest_and_resume(tmp_path):
    rows = ["sample_id,path,index,target_size"]
    for n in range(8):
        for t in range(1 + n % 3):
            write_image(tmp_path / f"s{n}_{t}.png", 20 * n + t)
            rows.append(f"s{n},s{n}_{t}.png,{t},{n / 2}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    cfg = fast_config(tmp_path / "m.csv", max_epochs=1)
    result = train(cfg, tmp_path / "out", progress=False)
    assert set(result.val_metrics) >= {"mae", "rmse", "r2"}
    assert Predictor.load(result.best_checkpoint).spec.target_names == ["target_size"]
    cfg.train.max_epochs = 2
    resumed = train(cfg, tmp_path / "out", resume=True, progress=False)
    assert torch.load(resumed.last_checkpoint, weights_only=True)["global_step"] == 4  # 2 epochs x 2 steps
    assert (tmp_path / "out/logs/version_0/metrics.csv").exists() and (tmp_path / "out/logs/version_1/metrics.csv").exists()
    rows, _ = predict(result.last_checkpoint, [tmp_path / "m.csv"])
    assert len(rows) == 8 and isinstance(rows[0]["prediction"], float)


def test_an_existing_run_is_not_overwritten(trained):
    data, result = trained
    with pytest.raises(ConfigError, match="--resume"):
        train(fast_config(data), result.out_dir, progress=False)


def test_config_precedence_defaults_yaml_flags(tmp_path):
    (tmp_path / "c.yaml").write_text("model:\n  backbone: resnet50\n  hidden_size: 32\ntrain:\n  lr: 0.5\n")
    cfg = resolve_config(tmp_path / "c.yaml", {"train": {"lr": 0.1}})
    assert (cfg.model.backbone, cfg.model.hidden_size, cfg.train.lr, cfg.train.batch_size) == ("resnet50", 32, 0.1, 8)
    (tmp_path / "bad.yaml").write_text("model:\n  backbon: resnet50\n")
    with pytest.raises(ConfigError, match="unknown option model.backbon"):
        resolve_config(tmp_path / "bad.yaml")


def test_short_samples_error_or_drop_reported(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_label=4)
    cfg = fast_config(data, max_epochs=1)
    cfg.data.min_images = 3
    with pytest.raises(DataError, match=r"'left/s0'.*fewer than --min-images 3.*--short-samples drop"):
        train(cfg, tmp_path / "a", progress=False)
    cfg.data.short_samples = "drop"
    result = train(cfg, tmp_path / "b", progress=False)
    assert len([r for r in result.reported if "dropped" in r]) == 4  # two 2-image samples per label


def test_a_sample_folder_without_images_is_an_error_or_a_reported_drop(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_label=4)
    (data / "left" / "hollow").mkdir()
    cfg = fast_config(data, max_epochs=1)
    with pytest.raises(DataError, match=r"'left/hollow'.*has no images"):
        train(cfg, tmp_path / "a", progress=False)
    cfg.data.short_samples = "drop"
    result = train(cfg, tmp_path / "b", progress=False)
    assert any("left/hollow" in r and "no images, dropped" in r for r in result.reported)


def test_half_precision_on_a_cpu_is_refused_clearly(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    cfg = fast_config(make_folder_dataset(tmp_path / "data"), precision="16-mixed")
    with pytest.raises(ConfigError, match="16-mixed needs a CUDA GPU"):
        train(cfg, tmp_path / "out", progress=False)


def test_classes_named_like_the_fixed_columns_get_their_own_columns(tmp_path):
    from seqvision.inference.predictor import output_columns

    assert output_columns(["cat", "sample", "p_sample", "prediction"]) == ["cat", "p_p_sample", "p_sample", "p_prediction"]
    data = make_folder_dataset(tmp_path / "data", labels=("sample", "prediction"), per_label=2)
    result = train(fast_config(data, max_epochs=1), tmp_path / "out", progress=False)
    rows, _ = predict(result.best_checkpoint, [data], tmp_path / "preds.csv")
    assert set(rows[0]) == {"sample", "prediction", "p_sample", "p_prediction"}
    for row in rows:
        assert row["sample"].rsplit("/", 2)[-2] in ("sample", "prediction")  # the id, not a probability
        assert row["p_sample"] + row["p_prediction"] == pytest.approx(1.0, abs=1e-5)
    header = (tmp_path / "preds.csv").read_text().splitlines()[0]
    assert header == "sample,prediction,p_prediction,p_sample"  # classes in their sorted order


def test_last_checkpoint_is_written_every_epoch_even_when_validation_stops_improving(tmp_path):
    # frozen backbone and lr=0: nothing changes, so val_loss never improves after the first epoch and
    # best.ckpt stays at epoch 0; last.ckpt must still hold the final epoch (--resume continues from it)
    data = make_folder_dataset(tmp_path / "data", per_label=4)
    cfg = fast_config(data, max_epochs=3, lr=0.0, backbone_lr=0.0)
    cfg.model.freeze = True
    result = train(cfg, tmp_path / "out", progress=False)
    best = torch.load(result.best_checkpoint, weights_only=True)
    last = torch.load(result.last_checkpoint, weights_only=True)
    assert best["epoch"] == 0
    assert last["epoch"] == 2 and last["global_step"] == 3 * best["global_step"]


def _write_motion_dataset(root: Path, *, per_class: int = 32, size: int = 16) -> Path:
    """A bright square moving left or right across noise: direction (order AND left/right) is the label."""
    import random

    import numpy as np
    from PIL import Image

    rng = random.Random(0)
    for label in ("left", "right"):
        for n in range(per_class):
            frames = rng.randint(4, 6)
            xs = [1 + 2 * t for t in range(frames)]
            if label == "left":
                xs.reverse()
            y = rng.randint(0, size - 5)
            for t, x in enumerate(xs):
                array = np.random.default_rng(n * 10 + t).integers(0, 60, (size, size, 3), dtype=np.uint8)
                array[y : y + 4, x : x + 4] = 230
                path = root / label / f"{label}{n}" / f"f{t}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)
    return root


@pytest.mark.slow
def test_a_direction_task_learns_with_the_default_augmentation(tmp_path):
    """The default augmentation keeps direction: with a random flip (the old default) the labels of
    half the samples are reversed and this task stays at chance."""
    data = _write_motion_dataset(tmp_path / "data")
    cfg = fast_config(data, max_epochs=8, batch_size=8, lr=5e-3, backbone_lr=5e-3)
    cfg.data.val_fraction, cfg.data.test_fraction = 0.2, 0.25
    assert cfg.data.augment is None and cfg.model.freeze is False  # augmentation on, as users get it
    result = train(cfg, tmp_path / "out", progress=False)
    assert result.test_metrics["accuracy"] >= 0.85


def test_loss_options_of_another_task_are_said(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_label=4)
    cfg = fast_config(data, max_epochs=1, loss="l1")
    with pytest.warns(UserWarning, match="--loss l1 has no effect on a classification task"):
        train(cfg, tmp_path / "out", progress=False)


def test_weight_decay_spares_biases_and_normalization_weights():
    from seqvision.training.module import decay_groups

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.LSTM(4, 5), torch.nn.Linear(5, 2))
    groups = decay_groups(list(model.parameters()), lr=0.1, weight_decay=0.01)
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in groups}
    decayed = {id(model[0].weight), id(model[2].weight_ih_l0), id(model[2].weight_hh_l0), id(model[3].weight)}
    assert by_decay[0.01] == decayed
    assert by_decay[0.0] == {id(p) for p in model.parameters()} - decayed  # biases, BatchNorm's weight and bias
    assert all(g["lr"] == 0.1 for g in groups)


def test_a_run_started_before_the_weight_decay_rule_resumes(tmp_path, monkeypatch):
    """Its last.ckpt holds an optimizer with one group per part (every parameter decayed), not four: resuming keeps
    that layout instead of failing on a different number of parameter groups."""
    import seqvision.training.module as module
    from seqvision.models.checkpoint import read_checkpoint

    data = make_folder_dataset(tmp_path / "data", per_label=4)
    with monkeypatch.context() as m:
        m.setattr(module, "DECAY_RULE", "all")  # train as the earlier version did
        train(fast_config(data, max_epochs=1), tmp_path / "run", progress=False)
    raw = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)
    assert [g["weight_decay"] for g in raw["optimizer_states"][0]["param_groups"]] == [0.01, 0.01]  # heads, CNN: all decayed
    del raw["seqvision"]["decay_rule"]  # what an earlier version wrote
    torch.save(raw, tmp_path / "run" / "last.ckpt")
    result = train(fast_config(data, max_epochs=2), tmp_path / "run", resume=True, progress=False)
    resumed = read_checkpoint(result.last_checkpoint)
    assert resumed["epoch"] == 1 and resumed["seqvision"]["decay_rule"] == "all"
