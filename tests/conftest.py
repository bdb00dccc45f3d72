"""Shared fixtures: tiny synthetic data made in tmp_path, an isolated home, and a fast training config."""

from __future__ import annotations

import os

# Under pytest-xdist, each worker (and every process it starts: the CLI, the benchmarks run as subprocesses) gets
# its share of the cores as torch's threads, set before torch loads (OpenMP reads it then). Torch's default, a
# thread per core in each of 2 workers on 2 cores, oversubscribes them, and OpenMP's threads spin waiting on each
# other: alone, the multiview quick run took 41.8 s of CPU with 2 threads and 33.3 s with 1 (AMD EPYC, 2 cores).
# A user's own OMP_NUM_THREADS is left as it is.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
_THREADS = 0  # set here only when this file chooses the count
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    _THREADS = max(1, _cores // _WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from seqvision.config import DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402

if _THREADS:  # in case a plugin loaded torch before this file
    torch.set_num_threads(_THREADS)

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "mobilenet_v2-imagenet.pth"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's home or caches (torch hub, matplotlib, ...)."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.setenv("MPLCONFIGDIR", str(home / "mpl"))


def write_image(path: Path, value: int | tuple[int, int, int], size: int = 16) -> Path:
    """A flat-colour image (with a little texture) written in the format of ``path``'s suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = (value,) * 3 if isinstance(value, int) else value
    array = np.zeros((size, size, 3), dtype=np.uint8) + np.array(colour, dtype=np.uint8)
    array[::4, ::4] = 255 - array[::4, ::4]
    Image.fromarray(array).save(path)
    return path


def make_folder_dataset(root: Path, *, labels=("left", "right"), per_label: int = 3, lengths=(2, 3, 4), size: int = 16) -> Path:
    """``root/<label>/<sample>/f<i>.png``: brightness encodes the label, lengths vary per sample."""
    for li, label in enumerate(labels):
        for n in range(per_label):
            for t in range(lengths[n % len(lengths)]):
                write_image(root / label / f"s{n}" / f"f{t}.png", 40 + 150 * li + 5 * t, size)
    return root


@pytest.fixture
def folder_data(tmp_path) -> Path:
    return make_folder_dataset(tmp_path / "data")


def fast_config(data: Path | str, **train_overrides) -> RunConfig:
    """A config that trains in about a second: tiny CNN, 16x16 images, no workers."""
    train = dict(max_epochs=2, batch_size=4, lr=1e-2, backbone_lr=1e-2, patience=0, seed=0, accelerator="cpu")
    train.update(train_overrides)
    return RunConfig(
        data=DataConfig(data=str(data), image_size=16, resize_size=16, num_workers=0, val_fraction=0.3, test_fraction=0.0),
        model=ModelConfig(backbone="tiny_cnn", weights="none", hidden_size=8, dropout=0.0),
        train=TrainConfig(**train),
    )
