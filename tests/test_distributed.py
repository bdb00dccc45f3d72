"""Several processes: two ranks on gloo over loopback (spawned here with torchrun) train with identical
weights; predict and evaluate under torchrun shard the samples (also when the world size does not divide
them) and give what one process gives; the shares are merged without duplicates or losses."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import fast_config, make_folder_dataset
from seqvision.data.discovery import discover
from seqvision.data.splits import read_split_file
from seqvision.inference.predictor import Predictor
from seqvision.inference.sharding import merge
from seqvision.workflows import train_and_evaluate

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{TESTS}", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(_free_port()), *args]
    res = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    return res


TRAIN = """
import hashlib, sys
import lightning as L
from conftest import fast_config
import seqvision

data, run = sys.argv[1], sys.argv[2]

class WeightsAfterFirstStep(L.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == 1:
            digest = hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in module.parameters()))
            with open(f"{run}.rank{trainer.global_rank}", "w") as fh:
                fh.write(digest.hexdigest())

cfg = fast_config(data, max_epochs=1, devices=2, batch_size=2)
cfg.data.test_fraction = 0.3
cfg.train.diagnostics = "off"
seqvision.train(cfg, run, progress=False, callbacks=[WeightsAfterFirstStep()])
"""


@pytest.mark.slow
def test_two_gloo_processes_train_with_identical_weights_and_rank0_evaluates(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_label=5)
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(TRAIN))
    res = _torchrun(str(script), str(data), str(tmp_path / "run"))
    digests = [(tmp_path / f"run.rank{r}").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]  # DDP averaged the gradients: one model on both ranks after a step
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in res.stdout + res.stderr
    metrics = json.loads((tmp_path / "run" / "test" / "metrics.json").read_text())
    # the evaluation at the end (rank 0, every test sample) equals one process evaluating the checkpoint
    predictor = Predictor.load(tmp_path / "run" / "best.ckpt", precision="32")
    split = read_split_file(tmp_path / "run" / "splits.json")
    test = [s for s in discover(data) if split.get(s.id) == "test"]
    preds = predictor.run(test, with_targets=True)
    assert metrics["num_samples"] == len(test)
    assert metrics["accuracy"] == pytest.approx(float((preds.outputs.argmax(1) == preds.targets).float().mean()))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard")
    data = make_folder_dataset(root / "data", per_label=3)  # 6 samples
    cfg = fast_config(data)
    cfg.train.diagnostics = "off"
    return train_and_evaluate(cfg, root / "run", progress=False).best_checkpoint


@pytest.mark.slow
def test_predict_and_evaluate_under_torchrun_shard_and_equal_one_process(checkpoint, tmp_path):
    data = checkpoint.parents[1] / "data"
    samples = [str(p) for p in sorted((data / "left").iterdir()) + sorted((data / "right").iterdir())][:5]  # 5: odd
    _torchrun("-m", "seqvision", "predict", str(checkpoint), *samples, "--out", str(tmp_path / "two.csv"), "--precision", "32")
    from seqvision.cli import main

    assert main(["predict", str(checkpoint), *samples, "--out", str(tmp_path / "one.csv"), "--precision", "32"]) == 0
    two, one = (list(csv.DictReader(open(tmp_path / f"{n}.csv"))) for n in ("two", "one"))
    assert [r["sample"] for r in two] == [r["sample"] for r in one] and len(two) == 5
    for a, b in zip(two, one):
        assert a["prediction"] == b["prediction"] and float(a["left"]) == pytest.approx(float(b["left"]), abs=1e-5)
    res = _torchrun("-m", "seqvision", "evaluate", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "ev"),
                    "--precision", "32", "--diagnostics", "fast")
    assert res.stdout.count("accuracy=") == 1  # rank 0 prints; the other process's stdout is silent
    assert main(["evaluate", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "ev1"), "--precision", "32",
                 "--diagnostics", "fast"]) == 0
    two, one = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("ev", "ev1"))
    assert two["num_samples"] == one["num_samples"] == 6 and two["accuracy"] == one["accuracy"]
    assert two["diagnostics"]["shuffled"] == pytest.approx(one["diagnostics"]["shuffled"])


@pytest.mark.parametrize("world", [2, 3, 7])
def test_shares_merge_back_in_order_without_duplicates_or_losses(checkpoint, world):
    predictor = Predictor.load(checkpoint, precision="32")
    samples = discover(checkpoint.parents[1] / "data")
    whole = predictor.run(samples, with_targets=True, keep_features=True)
    parts = []
    for rank in range(world):
        mine = list(range(rank, len(samples), world))
        parts.append((mine, predictor.run([samples[i] for i in mine], with_targets=True, keep_features=True)))
    merged = merge(parts, samples)
    assert merged.sample_ids == whole.sample_ids
    assert torch.allclose(merged.outputs, whole.outputs, atol=1e-6) and torch.equal(merged.targets, whole.targets)
    assert [row for row, _ in merged.clips] == [row for row, _ in whole.clips]
    assert merged.sample_frames == whole.sample_frames
    with pytest.raises(RuntimeError, match="predicted by two processes"):
        merge(parts + [parts[0]], samples)
    with pytest.raises(RuntimeError, match="no process predicted sample"):
        merge(parts[1:], samples)


@pytest.mark.parametrize("world", [2, 3])  # (with 7 processes, more than the 6 samples, no share holds two)
def test_a_sample_given_twice_is_refused_by_the_merge(checkpoint, world):
    predictor = Predictor.load(checkpoint, precision="32")
    samples = discover(checkpoint.parents[1] / "data")
    assert len(samples) >= world
    # one sample given twice, at 0 and at `world`: next to each other in share 0, its rows would run together
    doubled = samples[:world] + [samples[0]] + samples[world:]
    shares = [list(range(rank, len(doubled), world)) for rank in range(world)]
    parts = [(mine, predictor.run([doubled[i] for i in mine], with_targets=True)) for mine in shares]
    with pytest.raises(RuntimeError, match="is given twice"):
        merge(parts, doubled)


def test_a_process_group_someone_else_started_is_left_alone(monkeypatch):
    """A user's own distributed job may call predict from one rank: nothing is sharded, nobody waits."""
    import torch.distributed as dist

    from seqvision.runtime import inference_group

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    assert inference_group() == (0, 1)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert inference_group() == (0, 1)


def test_a_bare_cuda_device_is_each_processs_own_gpu_under_torchrun(monkeypatch):
    """``--device cuda`` under torchrun: rank k's process takes cuda:LOCAL_RANK, not GPU 0 for all; an
    explicit cuda:N is kept, and a GPU that is not there is refused naming the ones that are."""
    from seqvision.errors import ConfigError
    from seqvision.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert resolve_device("cuda") == torch.device("cuda", 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.delenv("LOCAL_RANK")
    assert resolve_device("cuda") == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="cuda:0 to cuda:3"):
        resolve_device("cuda:4")
