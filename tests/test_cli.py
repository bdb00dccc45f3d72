"""The CLI in-process: parse, call the library, print one line for our errors."""

import json
import subprocess
import sys

import pytest

from seqvision.cli import main

from conftest import make_folder_dataset


def _train_args(data, out, *extra):
    return [
        "train", "--data", str(data), "--out", str(out), "--backbone", "tiny_cnn", "--weights", "none",
        "--image-size", "16", "--resize-size", "16", "--max-epochs", "2", "--batch-size", "4", "--hidden-size", "8",
        "--num-workers", "0", "--val-fraction", "0.3", "--test-fraction", "0.3", "--accelerator", "cpu",
        "--no-progress", *extra,
    ]


def test_train_evaluate_predict_through_the_cli(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "data", per_label=4)
    assert main(_train_args(data, tmp_path / "run", "--seed", "3", "--max-images", "3")) == 0
    out = capsys.readouterr().out
    assert "best checkpoint:" in out and "test:" in out
    assert (tmp_path / "run" / "test" / "metrics.json").exists()
    import yaml

    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["seed"] == 3 and saved["data"]["max_images"] == 3

    ckpt = str(tmp_path / "run" / "best.ckpt")
    assert main(["evaluate", ckpt, "--data", str(data), "--out", str(tmp_path / "ev")]) == 0
    assert "accuracy=" in capsys.readouterr().out
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["num_samples"] == 8

    assert main(["predict", ckpt, str(data / "left" / "s0"), str(data / "right" / "s1"), "--out", str(tmp_path / "p.csv")]) == 0
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 3
    assert main(["predict", ckpt, str(data / "left" / "s0")]) == 0
    assert capsys.readouterr().out.splitlines()[-2] == "sample,prediction,left,right"


def test_bad_input_is_one_clear_line_and_exit_1(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "data", per_label=4)
    (data / "left" / "s1" / "f0.png").write_bytes(b"")
    assert main(_train_args(data, tmp_path / "run")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("seqvision: error: sample 'left/s1'") and "empty file" in err[0]


def test_on_bad_image_skip_trains_and_reports(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "data", per_label=4)
    (data / "left" / "s1" / "f0.png").write_bytes(b"")
    assert main(_train_args(data, tmp_path / "run", "--on-bad-image", "skip")) == 0
    err = capsys.readouterr().err
    assert "left out, clips shortened (not silently dropped)" in err and "f0.png: empty file" in err


def test_missing_data_and_missing_checkpoint(tmp_path, capsys):
    assert main(_train_args(tmp_path / "nothing", tmp_path / "run")) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "none.ckpt"), str(tmp_path)]) == 1
    assert "checkpoint" in capsys.readouterr().err


def test_help_is_instant_and_imports_no_torch():
    code = "import sys; from seqvision.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0


def test_cli_choices_are_the_implementations_own():
    from seqvision.config import POOL_CHOICES, SAMPLING_CHOICES, TASK_CHOICES
    from seqvision.data.sampling import MODES
    from seqvision.data.targets import TASKS
    from seqvision.models.backbones import POOLS

    assert POOL_CHOICES == POOLS and SAMPLING_CHOICES == MODES and TASK_CHOICES == ("auto", *TASKS)


def test_extract_caches_every_pooling_train_can_use(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "data")
    args = ["extract", "--data", str(data), "--out", str(tmp_path / "cache"), "--backbone", "tiny_cnn", "--weights", "none",
            "--image-size", "16", "--num-workers", "0", "--no-progress", "--pool", "grid2"]
    assert main(args) == 0  # grid2 used to be refused by extract although train takes it
    assert "extracted 18 images" in capsys.readouterr().out
    assert main(["cache", "info", str(tmp_path / "cache")]) == 0
    assert "grid2" in capsys.readouterr().out


def test_extract_and_cache_commands(tmp_path, capsys):
    import torch

    from seqvision.models.backbones import build_backbone

    data = make_folder_dataset(tmp_path / "data")
    torch.save(build_backbone("tiny_cnn", weights="none").trunk.state_dict(), tmp_path / "tiny.pth")
    # random init would be other weights (another cache key) on every call: use a fixed weights file
    args = ["extract", "--data", str(data), "--out", str(tmp_path / "cache"), "--backbone", "tiny_cnn", "--weights", str(tmp_path / "tiny.pth"),
            "--image-size", "16", "--num-workers", "0", "--precision", "32", "--no-progress"]
    assert main(args) == 0
    assert "extracted 18 images" in capsys.readouterr().out
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "extracted 0 images" in out and "18 already cached" in out
    assert main(["cache", "info", "--dir", str(tmp_path / "cache")]) == 0
    assert "tiny_cnn" in capsys.readouterr().out
    assert main(["cache", "info", str(tmp_path / "cache")]) == 0  # the folder may also come positionally
    assert "18 images" in capsys.readouterr().out
    assert main(["cache", "clear", str(tmp_path / "cache"), "--key", "nosuchkey"]) != 0
    assert "no such key" in capsys.readouterr().err
    assert main(["cache", "clear", "--dir", str(tmp_path / "cache")]) == 0
    assert main(["cache", "info", "--dir", str(tmp_path / "cache")]) == 0
    assert "empty" in capsys.readouterr().out


def test_train_frozen_uses_the_cache(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "data", per_label=4)
    assert main(_train_args(data, tmp_path / "run", "--freeze", "--cache", str(tmp_path / "cache"))) == 0
    assert "feature cache: 0 images reused, 22 computed" in capsys.readouterr().out
    assert main(_train_args(data, tmp_path / "run2", "--freeze", "--cache", str(tmp_path / "cache"))) == 0
    assert "feature cache: 22 images reused, 0 computed" in capsys.readouterr().out
