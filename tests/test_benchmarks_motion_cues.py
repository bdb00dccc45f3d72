"""The motion-cue benchmark runs (--quick): it checks that it works, not what it finds."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "motion_cues.py"


@pytest.mark.slow
def test_motion_cues_quick_runs_every_configuration():
    res = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    for task in ("direction", "approach"):
        assert set(report["results"][task]) == {"avg", "avg + temporal diff", "grid2", "grid2 + temporal diff"}
        assert all(0 <= acc <= 1 for r in report["results"][task].values() for acc in r["test_accuracy"])
