"""benchmarks/data_sources.py --quick reads the same samples from local files, local shards, S3 files and S3 shards (moto's
server on loopback), extracting and training from each, and prints the table and the targets (it checks that it
works, not speed). Skips without moto and s3fs (the dev extra). Run in this process: the imports (torch,
Lightning, s3fs) are most of a fresh interpreter's time, and the suite's workers have them already."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")
pytest.importorskip("boto3")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_data_sources_quick_measures_every_source_it_can_read(monkeypatch, capsys):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "SEQVISION_CACHE"):
        monkeypatch.setenv(name, "restored-after-the-test")  # the script sets them: put back what was there
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", ["benchmarks/data_sources.py", "--quick"])
    import data_sources

    s3fs.S3FileSystem.clear_instance_cache()
    try:
        data_sources.main()
    finally:
        s3fs.S3FileSystem.clear_instance_cache()  # its instances name the server that is gone
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    assert report["quick"] is True and report["samples"] == 8
    results = report["results"]
    assert list(results) == ["local files", "local shards", "S3 files", "S3 shards"]
    for name in ("local files", "local shards", "S3 files", "S3 shards"):  # a pack by URL is read like the others
        assert results[name]["extract"] > 0 and results[name]["train"] > 0, (name, results[name])
    assert "| local shards |" in out and "page cache not dropped (--quick)" in out
    assert "target: local shards >= 3x local files" in out and "target: S3 shards >= 80% of local shards" in out
