"""benchmarks/feature_precision.py --quick runs on real photos and reports every figure."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_WEIGHTS

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "feature_precision.py"
PHOTOS = Path("/usr/share/doc/opencv-doc/examples/data/baboon.jpg")


@pytest.mark.slow
@pytest.mark.skipif(not PHOTOS.exists(), reason="Debian's opencv-doc (real photos) is not installed")
def test_feature_precision_quick_reports_its_figures():
    res = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["photos"] == 4
    assert 0.99 < report["resnet18"]["min_cosine"] <= 1.0 + 1e-6
    assert set(report["resnet18_images_per_s"]) == {"bf16_onednn", "bf16_eager", "fp32_eager"}
    # the real MobileNetV2 figures need the offline ImageNet weights: reported and checked wherever they are here
    assert ("mobilenet_v2_imagenet" in report) == SHARED_WEIGHTS.is_file()
    if "mobilenet_v2_imagenet" in report:
        m = report["mobilenet_v2_imagenet"]
        assert 0.99 < m["min_cosine"] <= m["mean_cosine"] <= 1.0 + 1e-6 and 0 <= m["same_imagenet_class"] <= 1
