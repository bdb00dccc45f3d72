"""benchmarks/decode_speed.py --quick runs the naive loop, extract (reduced and exact decoding) and the CNN alone
on 1080p and 12 MP JPEGs and a 1080p H.264 video made from OpenCV's real samples (skips without them)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_WEIGHTS

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "decode_speed.py"
OPENCV = Path("/usr/share/doc/opencv-doc/examples/data")


@pytest.mark.slow
@pytest.mark.skipif(not (OPENCV / "vtest.avi").is_file(), reason="OpenCV's sample data (Debian opencv-doc) is not installed")
def test_decode_speed_quick_reports_every_input_kind():
    res = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(report["results"]) == {"1080p JPEG", "12 MP JPEG", "1080p H.264 video"}
    assert [r["images"] for r in report["results"].values()] == [8, 2, 6]
    assert all(r[k] > 0 for r in report["results"].values() for k in ("naive", "extract", "extract_exact", "cnn_only", "decode_ms", "bound"))
    # the cosine rows need the offline ImageNet weights: computed and checked wherever they are here
    assert (report["cosine"] is None) == (not SHARED_WEIGHTS.is_file())
    if report["cosine"] is not None:
        assert report["cosine"]["min"] >= 0.99
    assert "| 1080p H.264 video | 6 |" in res.stdout
