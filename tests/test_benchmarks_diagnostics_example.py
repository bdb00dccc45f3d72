"""benchmarks/diagnostics_example.py --quick: a multi-view set of real photos, split by object."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "diagnostics_example.py"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/doc/opencv-doc/examples/data/baboon.jpg").exists(), reason="opencv-doc not installed")
def test_diagnostics_example_prints_findings():
    res = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    report = res.stdout.split("$ seqvision report run")[1]
    assert "group(s): mean accuracy" in report
    assert sum(line.strip().startswith("- ") for line in report.splitlines()) >= 3  # the findings
