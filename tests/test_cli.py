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
    assert saved["train"]["seed"] == 3 and saved["data"]["num_frames"] == 3

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
    assert main(["--help"]) == 0  # argparse's exit becomes main's return value


def test_cli_choices_are_the_implementations_own():
    from seqvision.config import POOL_CHOICES, SAMPLING_CHOICES, TASK_CHOICES
    from seqvision.data.sampling import MODES
    from seqvision.tasks import TASKS
    from seqvision.models.backbones import POOLS

    assert POOL_CHOICES == POOLS and SAMPLING_CHOICES == MODES and TASK_CHOICES == ("auto", *TASKS)
    from seqvision.config import DIAGNOSTICS_CHOICES
    from seqvision.evaluation import diagnostics

    assert DIAGNOSTICS_CHOICES == diagnostics.MODES


def test_extract_caches_every_pooling_train_can_use(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "data")
    args = ["extract", "--data", str(data), "--cache-dir", str(tmp_path / "cache"), "--backbone", "tiny_cnn", "--weights", "none",
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
    args = ["extract", "--data", str(data), "--cache-dir", str(tmp_path / "cache"), "--backbone", "tiny_cnn", "--weights", str(tmp_path / "tiny.pth"),
            "--image-size", "16", "--num-workers", "0", "--precision", "32", "--no-progress"]
    assert main(args) == 0
    assert "extracted 18 images" in capsys.readouterr().out
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "extracted 0 images" in out and "18 already cached" in out
    assert main(["cache", "info", "--cache-dir", str(tmp_path / "cache")]) == 0  # one flag family: --cache-dir
    assert "tiny_cnn" in capsys.readouterr().out
    assert main(["cache", "info", "--dir", str(tmp_path / "cache")]) == 0  # and the older names
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
    assert main(_train_args(data, tmp_path / "run", "--freeze", "--cache-dir", str(tmp_path / "cache"))) == 0
    assert "feature cache: 0 images reused, 22 computed" in capsys.readouterr().out
    assert main(_train_args(data, tmp_path / "run2", "--freeze", "--cache", str(tmp_path / "cache"))) == 0
    assert "feature cache: 22 images reused, 0 computed" in capsys.readouterr().out


def test_a_cache_filled_with_content_hashes_is_found_by_train(tmp_path, capsys):
    import torch

    from seqvision.models.backbones import build_backbone

    data = make_folder_dataset(tmp_path / "data", per_label=4)
    torch.save(build_backbone("tiny_cnn", weights="none").trunk.state_dict(), tmp_path / "tiny.pth")
    weights = ["--backbone", "tiny_cnn", "--weights", str(tmp_path / "tiny.pth"), "--image-size", "16", "--resize-size", "16"]
    assert main(["extract", "--data", str(data), "--out", str(tmp_path / "cache"), *weights, "--num-workers", "0",
                 "--precision", "32", "--content-hash", "--no-progress"]) == 0
    assert "extracted 22 images" in capsys.readouterr().out
    args = _train_args(data, tmp_path / "run", "--freeze", "--cache", str(tmp_path / "cache"), "--feature-precision", "32")
    args[args.index("--weights") + 1] = str(tmp_path / "tiny.pth")
    assert main(args) == 0
    assert "feature cache: 22 images reused, 0 computed" in capsys.readouterr().out


def test_cache_info_shows_a_damaged_entry_instead_of_failing(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "data")
    assert main(["extract", "--data", str(data), "--out", str(tmp_path / "cache"), "--backbone", "tiny_cnn", "--weights", "none",
                 "--image-size", "16", "--num-workers", "0", "--no-progress"]) == 0
    (meta,) = (tmp_path / "cache").glob("*/meta.json")
    meta.write_text("{not json")
    assert main(["cache", "info", str(tmp_path / "cache")]) == 0
    assert "meta.json unreadable" in capsys.readouterr().out


def test_every_flag_has_a_help_line_and_train_shows_its_defaults(capsys):
    import argparse

    from seqvision.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [f"{name} {a.option_strings or a.dest}" for name, p in sub.choices.items() for a in p._actions
               if a.dest != "help" and not a.help]
    assert not missing
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("--batch-size BATCH_SIZE samples per step (default: 8)", "(default: lstm)", "--hflip, --no-hflip",
                  "(default: False)", "(default: 0.15)"):
        assert shown in text, shown


@pytest.mark.slow
def test_logs_to_a_pipe_get_one_line_per_epoch_and_no_library_chatter(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_label=4)
    args = [a for a in _train_args(data, tmp_path / "run") if a != "--no-progress"]
    quiet = subprocess.run([sys.executable, "-m", "seqvision", *args], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert "\r" not in quiet.stdout  # no progress bar redrawn into the log
    epochs = [line for line in quiet.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"] and "val_loss" in epochs[0]
    assert "GPU available" not in quiet.stderr and "Tip:" not in quiet.stderr and "deprecated" not in quiet.stderr
    verbose = subprocess.run([sys.executable, "-m", "seqvision", *args[:4], str(tmp_path / "run2"), *args[5:], "--verbose"],
                             capture_output=True, text=True, timeout=300)
    assert verbose.returncode == 0 and "GPU available" in verbose.stderr


def test_warnings_are_one_line_like_errors(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_label=4)
    args = [a for a in _train_args(data, tmp_path / "run") if a != "--no-progress"] + ["--lstm-dropout", "0.3", "--max-epochs", "1"]
    res = subprocess.run([sys.executable, "-m", "seqvision", *args], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    # said once (not once per place that validates), on one line, with no Python file:line or source line
    assert res.stderr.strip().splitlines() == [
        "seqvision: warning: --lstm-dropout 0.3 has no effect with --num-layers 1 (it acts between stacked layers)"
    ]


def test_the_old_name_of_num_frames_still_loads_from_yaml_and_checkpoints():
    from seqvision.config import RunConfig

    assert RunConfig.from_dict({"data": {"max_images": 5}}).data.num_frames == 5  # a checkpoint of an earlier version
    assert RunConfig.from_dict({"data": {"num_frames": 7}}).data.num_frames == 7
