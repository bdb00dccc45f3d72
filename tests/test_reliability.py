"""Faults: kill -9 in training and extraction, a full disk, NaN losses, damaged checkpoints."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seqvision.errors import CheckpointError, SeqVisionError, StorageError
from seqvision.inference.predictor import Predictor
from seqvision.models.checkpoint import read_checkpoint
from seqvision.workflows import train_and_evaluate as train

from conftest import fast_config, make_folder_dataset


def _run_until(cmd: list[str], ready, timeout: float = 120) -> subprocess.Popen:
    """Start ``cmd`` and SIGKILL it as soon as ``ready()`` is true (fails if it ends first)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return proc
        if proc.poll() is not None:
            pytest.fail(f"the process ended before it could be killed: {proc.stderr.read().decode()[-1500:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("timed out waiting to kill the process")


def _train_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "seqvision", "train", "--data", str(data), "--out", str(out), "--backbone", "tiny_cnn",
        "--weights", "none", "--image-size", "16", "--resize-size", "16", "--max-epochs", "12", "--batch-size", "4",
        "--hidden-size", "8", "--num-workers", "0", "--val-fraction", "0.25", "--test-fraction", "0",
        "--patience", "0", "--seed", "5", "--deterministic", "--accelerator", "cpu", "--no-progress", *extra,
    ]


def _epoch_of(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["epoch"])
    except Exception:
        return -1


@pytest.mark.slow
def test_kill_9_during_training_then_resume_equals_an_uninterrupted_run(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_label=8, size=24)
    subprocess.run(_train_cmd(data, tmp_path / "full"), check=True, capture_output=True, timeout=300)

    run = tmp_path / "killed"
    _run_until(_train_cmd(data, run), lambda: (run / "last.ckpt").exists() and _epoch_of(run / "last.ckpt") >= 2)
    killed_at = torch.load(run / "last.ckpt", weights_only=True)["global_step"]
    subprocess.run(_train_cmd(data, run, "--resume"), check=True, capture_output=True, timeout=300)

    full = torch.load(tmp_path / "full" / "last.ckpt", weights_only=True)
    resumed = torch.load(run / "last.ckpt", weights_only=True)
    assert 0 < killed_at < full["global_step"] == resumed["global_step"]
    for key, value in full["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    assert (run / "val" / "metrics.json").read_text() == (tmp_path / "full" / "val" / "metrics.json").read_text()


@pytest.mark.slow
def test_kill_9_during_extraction_then_rerun_computes_only_the_rest(tmp_path):
    from seqvision.models.backbones import build_backbone

    data = make_folder_dataset(tmp_path / "data", per_label=30, lengths=(4,), size=64)  # 240 images
    torch.save(build_backbone("tiny_cnn", weights="none").trunk.state_dict(), tmp_path / "w.pth")
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "seqvision", "extract", "--data", str(data), "--out", str(cache), "--backbone", "tiny_cnn",
           "--weights", str(tmp_path / "w.pth"), "--image-size", "64", "--batch-size", "4", "--shard-rows", "4",
           "--num-workers", "0", "--precision", "32", "--no-progress"]
    _run_until(cmd, lambda: len(list(cache.glob("*/shard-*.json"))) >= 3)
    committed = sum(1 for _ in cache.glob("*/shard-*.json")) * 4
    assert committed < 240
    res = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    done = int(res.stdout.split("extracted ")[1].split(" ")[0])
    cached = int(res.stdout.split("), ")[1].split(" already")[0])
    assert cached >= committed and done + cached == 240  # nothing twice, nothing lost

    clean = tmp_path / "clean"
    subprocess.run([*cmd[:cmd.index("--out") + 1], str(clean), *cmd[cmd.index("--out") + 2:]], check=True, capture_output=True)
    import json

    key_dir = next(p for p in cache.iterdir() if p.is_dir())
    assert key_dir.name == next(p for p in clean.iterdir() if p.is_dir()).name
    import numpy as np

    def rows(folder):
        out = {}
        for record in folder.glob("shard-*.json"):
            array = np.load(record.with_suffix(".npy"))
            for i, ident in enumerate(json.loads(record.read_text())["identities"]):
                out[ident] = array[i]
        return out

    a, b = rows(key_dir), rows(clean / key_dir.name)
    assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    data = make_folder_dataset(tmp_path / "data", per_label=4)
    cfg = fast_config(data, max_epochs=3)
    original = torch.save
    calls = {"n": 0}

    def flaky(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:  # epoch 1's best + last went through; then the disk fills up mid-write
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", flaky)
    with pytest.raises(StorageError, match="No space left on device.*intact"):
        train(cfg, tmp_path / "out", progress=False)
    good = read_checkpoint(tmp_path / "out" / "last.ckpt")  # loads and verifies
    assert good["global_step"] > 0
    assert not list((tmp_path / "out").glob(".*.tmp"))


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_an_atomic_write_gives_the_file_the_mode_open_would(tmp_path, umask):
    """mkstemp's 0600 is not kept: a run folder or a pack shared or served as another user reads as a plain
    open() would have written it, and a private umask stays private."""
    from seqvision.io import atomic_write_text

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "metrics.json", "{}")
        (tmp_path / "plain.json").write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == (tmp_path / "plain.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_nan_loss_stops_keeping_the_last_good_checkpoint_or_is_skipped(tmp_path, monkeypatch):
    from seqvision.tasks import TaskLoss

    data = make_folder_dataset(tmp_path / "data", per_label=4)
    original = TaskLoss.forward
    state = {"calls": 0}

    def poisoned(self, outputs, targets):
        state["calls"] += 1
        loss = original(self, outputs, targets)
        return loss * float("nan") if state["calls"] > 4 else loss  # from the 2nd epoch on

    monkeypatch.setattr(TaskLoss, "forward", poisoned)
    with pytest.raises(SeqVisionError, match="loss became nan.*--on-nan skip.*last good checkpoint"):
        train(fast_config(data, max_epochs=3), tmp_path / "stop", progress=False)
    kept = read_checkpoint(tmp_path / "stop" / "last.ckpt")
    assert all(torch.isfinite(v).all() for v in kept["state_dict"].values())

    state["calls"] = 0
    result = train(fast_config(data, max_epochs=3, on_nan="skip"), tmp_path / "skip", progress=False)
    assert any("skipped: the loss was NaN" in r for r in result.reported)
    weights = torch.load(result.last_checkpoint, weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_flipped_bits_in_a_checkpoint_are_detected(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_label=4)
    result = train(fast_config(data, max_epochs=1), tmp_path / "out", progress=False)
    raw = torch.load(result.best_checkpoint, weights_only=True)
    raw["state_dict"]["model.task_head.linear.bias"] += 1.0  # what a bad copy would do to the bytes
    torch.save(raw, tmp_path / "tampered.ckpt")
    with pytest.raises(CheckpointError, match="corrupt.*checksum"):
        Predictor.load(tmp_path / "tampered.ckpt")
    (tmp_path / "out" / "last.ckpt").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        train(fast_config(data, max_epochs=2), tmp_path / "out", resume=True, progress=False)


def test_resume_before_the_first_checkpoint_starts_over(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_label=4)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.yaml").write_text("{}\n")  # what a run killed in its first epoch leaves
    with pytest.warns(UserWarning, match="starting the run from the beginning"):
        result = train(fast_config(data, max_epochs=1), tmp_path / "out", resume=True, progress=False)
    assert result.last_checkpoint.exists()


def test_incremental_digest_equals_the_full_one_and_rehashes_only_what_can_change(monkeypatch):
    import seqvision.io as sio
    from seqvision.models.sequence_model import build_sequence_model
    from seqvision.training.module import make_adamw

    hashed: list[str] = []
    real = sio._hash_tensor
    monkeypatch.setattr(sio, "_hash_tensor", lambda digest, name, t: (hashed.append(name), real(digest, name, t)))
    torch.manual_seed(0)
    model = build_sequence_model(2, backbone="tiny_cnn", weights="none", hidden_size=8, trainable_stages=1)
    stable = {f"encoder.{name}" for name, t in model.encoder.frozen_tensors().items() if not t.requires_grad}
    assert stable and all(name in model.state_dict() for name in stable)
    optim = make_adamw([{"params": [p for p in model.parameters() if p.requires_grad]}], weight_decay=0.01)
    digest = sio.IncrementalTensorDigest()
    model.train()
    for step in range(3):
        hashed.clear()
        got = digest(model.state_dict(), stable=stable)
        rehashed = set(hashed)
        assert got == sio.tensor_digest(model.state_dict())  # the value a load verifies against
        assert rehashed == set(model.state_dict()) if step == 0 else rehashed.isdisjoint(stable)
        # a fused optimizer step and BatchNorm statistics change tensors WITHOUT bumping their version
        # counters: only the frozen names may be trusted
        loss = model(torch.rand(6, 3, 16, 16), torch.tensor([3, 3])).sum()
        optim.zero_grad()
        loss.backward()
        optim.step()
    with torch.no_grad():  # a frozen tensor changed in place after all (its version moves): hashed again
        model.encoder.trunk[0][0].weight.add_(1.0)
    hashed.clear()
    assert digest(model.state_dict(), stable=stable) == sio.tensor_digest(model.state_dict())
    assert "encoder.trunk.0.0.weight" in hashed


def test_a_frozen_runs_checkpoints_hash_the_backbone_once_and_all_verify(tmp_path, monkeypatch):
    import seqvision.io as sio

    hashed: list[str] = []  # what the checkpoint saves hash (not the full check of every load)
    saving = {"now": False}
    real_hash, real_call = sio._hash_tensor, sio.IncrementalTensorDigest.__call__

    def call(self, tensors, stable=frozenset()):
        saving["now"] = True
        try:
            return real_call(self, tensors, stable)
        finally:
            saving["now"] = False

    monkeypatch.setattr(sio.IncrementalTensorDigest, "__call__", call)
    monkeypatch.setattr(sio, "_hash_tensor", lambda digest, name, t: (saving["now"] and hashed.append(name), real_hash(digest, name, t)))
    data = make_folder_dataset(tmp_path / "data", per_label=4)
    cfg = fast_config(data, max_epochs=3)
    cfg.model.freeze = True
    train(cfg, tmp_path / "out", progress=False)
    backbone = [n for n in set(hashed) if n.startswith("model.encoder.trunk.")]
    head = [n for n in set(hashed) if not n.startswith("model.encoder.")]
    assert backbone and head
    saves = hashed.count(head[0])
    assert saves >= 3  # last.ckpt every epoch, best.ckpt when it improved
    assert all(hashed.count(n) == 1 for n in backbone)  # the frozen backbone: hashed at the first save only
    for name in ("last.ckpt", "best.ckpt"):
        read_checkpoint(tmp_path / "out" / name)  # every saved digest is the full one
