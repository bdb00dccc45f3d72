"""benchmarks/predict_memory.py --quick runs the real predict command on one long sample and reports its
peak memory per sample size."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "predict_memory.py"


@pytest.mark.slow
def test_predict_memory_quick_reports_peak_rss_per_sample_size():
    res = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert [r["images"] for r in report["rows"]] == [10, 60]
    assert all(r["self_mb"] > 50 and r["seconds"] > 0 for r in report["rows"])
    assert 1 <= report["chunk"] <= 64
    assert set(report["growth"]) == {"10->60"}
    assert "| 60 |" in res.stdout
