"""Every option is checked at the boundary: a bad value is one line on stderr, exit non-zero, no traceback,
and nothing written."""

import pytest
import yaml

from seqvision.cli import _TRAIN_FLAGS, main

from conftest import make_folder_dataset

# one out-of-range (or otherwise impossible) value per training flag
BAD_TRAIN_VALUES = {
    "--data": "no/such/folder", "--task": "clustering", "--targets": "speed", "--num-frames": "0",
    "--sampling": "sometimes", "--eval-sampling": "sometimes", "--stride": "0", "--fps": "-5", "--eval-clips": "0",
    "--min-images": "0", "--short-samples": "ignore", "--on-bad-image": "ignore", "--group-by": "((",
    "--val-fraction": "1.5", "--test-fraction": "-0.1", "--image-size": "0", "--resize-size": "-1",
    "--mean": ["0.5", "0.5"], "--std": ["0", "1", "1"], "--num-workers": "-1", "--shuffle-buffer": "0", "--cache-dtype": "int8",
    "--feature-precision": "8", "--feature-runtime": "tensorrt", "--backbone": "resnet9000", "--weights": "no/such/weights.pth", "--pool": "median",
    "--trainable-stages": "0", "--chunk-size": "0", "--head": "cnn", "--d-model": "0", "--nhead": "0",
    "--hidden-size": "0", "--num-layers": "0", "--lstm-dropout": "1.5", "--dropout": "2", "--max-epochs": "0",
    "--batch-size": "0", "--lr": "-0.1", "--backbone-lr": "-1", "--weight-decay": "-1", "--warmup-fraction": "1",
    "--grad-clip": "-1", "--precision": "8", "--seed": "x", "--patience": "-1", "--monitor": "val_banana",
    "--label-smoothing": "1", "--class-weights": "inverse", "--loss": "huber", "--accelerator": "gpu",
    "--devices": "0", "--on-nan": "ignore", "--diagnostics": "sometimes", "--cache": None, "--memory-budget": "0",
    "--cache-budget": "0", "--num-nodes": "0", "--temporal-shift": "sideways", "--readout": "middle", "--drop-stages": "-1",
    "--video-decoder": "ffmpeg",
}
BOOLEAN = {"--augment", "--exact-decode", "--hflip", "--shuffle-frames", "--freeze", "--freeze-bn", "--checkpointing", "--temporal-diff", "--bidirectional", "--input-norm",
           "--balanced-sampler", "--deterministic", "--sync-batchnorm"}


def _base(data, out):
    return ["train", "--data", str(data), "--out", str(out), "--backbone", "tiny_cnn", "--weights", "none", "--image-size", "16",
            "--max-epochs", "1", "--num-workers", "0", "--no-progress", "--accelerator", "cpu"]


def _assert_one_line_error(capsys, code):
    err = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0], err
    return lines[0]


def test_every_training_flag_has_a_bad_value_here():
    flags = {entry[0] for entry in _TRAIN_FLAGS}
    assert flags - BOOLEAN == set(BAD_TRAIN_VALUES)


@pytest.mark.parametrize("flag", sorted(k for k, v in BAD_TRAIN_VALUES.items() if v is not None))
def test_a_bad_training_flag_is_one_line_and_writes_nothing(flag, tmp_path, capsys):
    import torch

    if flag == "--accelerator" and torch.cuda.is_available():
        pytest.skip("a GPU is available here")
    data = make_folder_dataset(tmp_path / "data", per_label=4)
    args = _base(data, tmp_path / "run")
    value = BAD_TRAIN_VALUES[flag]
    if flag in args:  # replace the base value
        i = args.index(flag)
        del args[i : i + 2]
    args += [flag, *value] if isinstance(value, list) else [flag, value]
    if flag in ("--chunk-size",):
        args.append("--checkpointing")
    if flag in ("--d-model", "--nhead"):
        args += ["--head", "transformer"]
    line = _assert_one_line_error(capsys, main(args))
    assert flag.lstrip("-").split("-")[0] in line.lower() or flag in ("--data", "--weights", "--backbone", "--group-by"), line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("yaml_text, fragment", [
    ("train:\n  batch_size: '8'\n", "train.batch_size = '8' (str) must be a whole number"),
    ("data:\n  mean: 0.5\n", "data.mean = 0.5 (float) must be a list of numbers"),
    ("model:\n  freeze: 'yes'\n", "model.freeze = 'yes' (str) must be true or false"),
    ("model:\n  dropout: [0.1]\n", "model.dropout"),
])
def test_yaml_values_of_the_wrong_type_are_refused_before_work(yaml_text, fragment, tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "data")
    (tmp_path / "c.yaml").write_text(yaml_text)
    line = _assert_one_line_error(capsys, main([*_base(data, tmp_path / "run"), "--config", str(tmp_path / "c.yaml")]))
    assert fragment in line
    assert not (tmp_path / "run").exists()


def test_options_without_effect_are_said_once(tmp_path):
    from seqvision.config import resolve_config, validate

    with pytest.warns(UserWarning, match="--lstm-dropout 0.3 has no effect with --num-layers 1"):
        validate(resolve_config(overrides={"model": {"lstm_dropout": 0.3}}))
    with pytest.warns(UserWarning, match="--eval-clips 3 has no effect with --sampling uniform"):
        validate(resolve_config(overrides={"data": {"eval_clips": 3}}))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    data = make_folder_dataset(root / "data", per_label=4)
    assert main(_base(data, root / "run")) == 0
    return data, root / "run" / "best.ckpt"


@pytest.mark.parametrize("extra, fragment", [
    (["--device", "foo"], "--device 'foo'"),
    (["--device", "cuda:7"], "--device cuda:7"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-3"], "--batch-size"),
    (["--num-workers", "-1"], "--num-workers"),
    (["--split", "test"], "--split test: no sample"),
    (["--precision", "16"], "--precision"),
])
def test_bad_evaluate_and_predict_options(checkpoint, extra, fragment, tmp_path, capsys):
    import torch

    if "cuda" in " ".join(extra) and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    data, ckpt = checkpoint
    line = _assert_one_line_error(capsys, main(["evaluate", str(ckpt), "--data", str(data), "--out", str(tmp_path / "ev"), *extra]))
    assert fragment in line
    assert not (tmp_path / "ev").exists()
    if "--split" not in extra:
        line = _assert_one_line_error(capsys, main(["predict", str(ckpt), str(data), "--out", str(tmp_path / "p.csv"), *extra]))
        assert fragment in line
        assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("extra", [["--batch-size", "0"], ["--shard-rows", "0"], ["--num-workers", "-2"], ["--image-size", "0"],
                                   ["--stride", "0"], ["--eval-clips", "0"], ["--num-frames", "0"]])
def test_bad_extract_options(extra, tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "data")
    args = ["extract", "--data", str(data), "--out", str(tmp_path / "cache"), "--backbone", "tiny_cnn", "--weights", "none", *extra]
    line = _assert_one_line_error(capsys, main(args))
    assert extra[0] in line
    assert not (tmp_path / "cache").exists()


def test_config_yaml_round_trips_every_default():
    """The resolved config written to config.yaml passes validation again (types included)."""
    from seqvision.config import RunConfig, resolve_config

    raw = yaml.safe_load(yaml.safe_dump(RunConfig().to_dict()))
    assert resolve_config(overrides=raw).to_dict() == RunConfig().to_dict()


@pytest.mark.parametrize("overrides, message", [
    ({"model": {"head": "mean", "hidden_size": 64}}, "--hidden-size has no effect with --head mean"),
    ({"model": {"head": "lstm", "d_model": 128}}, "--d-model has no effect with --head lstm"),
    ({"model": {"head": "transformer", "bidirectional": True}}, "--bidirectional has no effect with --head transformer"),
    ({"data": {"stride": 3}}, "--stride/--fps have no effect with --sampling uniform"),
    ({"model": {"freeze": True}, "train": {"backbone_lr": 0.01}}, "--backbone-lr has no effect with --freeze"),
    ({"data": {"cache": "/tmp/x"}}, "--cache has no effect without --freeze or --trainable-stages"),
    ({"data": {"cache_dtype": "float16"}}, "have no effect without --freeze"),
])
def test_more_options_without_effect_are_said(overrides, message):
    from seqvision.config import resolve_config, validate

    with pytest.warns(UserWarning, match=message):
        validate(resolve_config(overrides=overrides))


def test_the_default_options_warn_about_nothing():
    import warnings

    from seqvision.config import resolve_config, validate

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for head in ("lstm", "gru", "attention", "transformer", "mean", "max"):
            validate(resolve_config(overrides={"model": {"head": head}}))
