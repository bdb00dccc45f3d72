"""benchmarks/data_sources.py --quick reads the same samples from local files, local shards and S3 files (moto's
server on loopback), extracting and training from each, and prints the table and the targets (it checks that it
works, not speed). Skips without moto and s3fs (the dev extra)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("moto.server")
pytest.importorskip("s3fs")
pytest.importorskip("boto3")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "data_sources.py"


def test_data_sources_quick_measures_every_source_it_can_read():
    res = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["quick"] is True and report["samples"] == 12
    results = report["results"]
    assert list(results) == ["local files", "local shards", "S3 files", "S3 shards"]
    for name in ("local files", "local shards", "S3 files"):
        assert results[name]["extract"] > 0 and results[name]["train"] > 0, (name, results[name])
    s3_shards = results["S3 shards"]  # measured where the library reads a pack by URL; else why not, in one line
    for what in ("extract", "train"):
        assert s3_shards[what] > 0 if s3_shards[what] is not None else s3_shards[f"{what}_note"].count("\n") == 0 < len(s3_shards[f"{what}_note"])
    assert "| local shards |" in res.stdout and "page cache not dropped (--quick)" in res.stdout
    assert "target: local shards >= 3x local files" in res.stdout and "target: S3 shards >= 80% of local shards" in res.stdout
