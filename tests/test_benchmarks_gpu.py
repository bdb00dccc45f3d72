"""benchmarks/gpu.py (the script for a lent GPU machine) runs unchanged on the CPU with --dry-run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


@pytest.mark.slow
def test_gpu_benchmark_dry_run_prints_every_figure():
    res = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["dry_run"] is True and report["errors"] == {}
    for key in ("resnet18_extract_img_s", "resnet50_extract_img_s", "resnet18_cnn_only_img_s", "resnet50_cnn_only_img_s",
                "seqvision_extract_resnet18_img_s", "seqvision_extract_resnet18_steady_img_s"):
        assert report[key] > 0
    assert report["train_step_s"] > 0 and report["images"] == 8
