"""benchmarks/index_scale.py --quick runs and reports every figure (it checks that it works, not speed)."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "index_scale.py"


def test_index_scale_quick_reports_its_figures():
    res = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--inspect"], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert any(line.startswith("manifest") for line in lines) and any(line.startswith("folders") for line in lines)
    report = json.loads(lines[-1])
    assert report["quick"] is True
    manifest, folders = report["manifest"], report["folders"]
    for key in ("seconds", "rows", "rows_per_s", "samples", "frames", "peak_rss_mib", "base_rss_mib", "bytes_read"):
        assert key in manifest, key
    for key in ("seconds", "files", "files_per_s", "samples", "frames", "peak_rss_mib", "bytes_read", "image_bytes"):
        assert key in folders, key
    assert manifest["frames"] == manifest["rows"] == 5 * manifest["samples"]
    assert report["inspect"]["samples"] == manifest["samples"] and report["inspect"]["seconds"] > 0
    assert {"index", "split", "image headers"} <= set(report["inspect"]["stages"])
    assert folders["frames"] == folders["files"] and manifest["peak_rss_mib"] > 0
    # indexing a folder read no byte of any file (the README's claim), measured wherever /proc/self/io is
    assert (folders["bytes_read"] is None) == (manifest["bytes_read"] is None) == (not Path("/proc/self/io").is_file())
    if folders["bytes_read"] is not None:
        assert folders["bytes_read"] == 0
