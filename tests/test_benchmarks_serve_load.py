"""benchmarks/serve_load.py --quick serves a tiny checkpoint with the real command and loads it from 8 clients,
with and without batching: every request answered, the figures reported (it checks that it works, not speed)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"


@pytest.mark.slow
def test_serve_load_quick_reports_latency_throughput_and_batching():
    # both servers get the CNN's runtime and precision (so the table can be measured per runtime)
    runtime = "onnxruntime" if importlib.util.find_spec("onnxruntime") else "torch"
    res = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--precision", "32", "--runtime", runtime],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    runs = {(r["images_per_request"], r["mode"]): r for r in report["runs"]}
    assert set(runs) == {(k, m) for k in (1, 4) for m in ("batching", "no batching")}
    for (k, mode), run in runs.items():
        assert run["requests"] == 40 and run["errors"] == 0, run
        assert 0 < run["p50_ms"] <= run["p99_ms"] and run["requests_per_s"] > 0 and run["images_per_s"] > 0
        assert 0 < run["model_busy"] <= 1.0
        if mode == "no batching":  # one request per CNN pass
            assert run["cnn_passes"] == 40 and run["images_per_pass"] == k
        else:
            assert run["cnn_passes"] <= 40 and run["images_per_pass"] >= k
    for k in ("1", "4"):  # a request's answer does not depend on the requests it shared a batch with
        assert report["summary"][k]["max_output_diff"] < 1e-4
    assert "| 4 | batching |" in res.stdout and "| 1 | no batching |" in res.stdout
    assert all(r["options"].endswith(f"--precision 32 --runtime {runtime}") for r in report["runs"])
