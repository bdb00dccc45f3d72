"""benchmarks/stream_latency.py --quick streams a few real frames three ways and reports latency, CNN calls per
frame and the agreement of the outputs (it checks that it works, not its speed)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "stream_latency.py"


@pytest.mark.slow
def test_stream_latency_quick_reports_every_mode_and_their_agreement():
    # the CNN on ONNX Runtime where it is installed (--runtime, so the table can be measured per runtime)
    runtime = "onnxruntime" if importlib.util.find_spec("onnxruntime") else "torch"
    res = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--precision", "32", "--runtime", runtime],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    if "skipped" in report:  # no opencv-doc sample video on this machine: nothing was streamed or checked
        assert "skipped:" in res.stdout
        pytest.skip(f"benchmarks/stream_latency.py --quick: {report['skipped']} (Debian: apt-get install opencv-doc)")
    modes = report["modes"]
    assert set(modes) == {"carried", "window", "rerun"}
    assert modes["carried"]["cnn_images_per_frame"] == modes["window"]["cnn_images_per_frame"] == 1.0
    # re-running a window of 4: 1, 2, 3, then 4 images per frame
    assert modes["rerun"]["cnn_images_per_frame"] == (1 + 2 + 3 + 4 * (report["frames"] - 3)) / report["frames"]
    assert all(m["p50_ms"] > 0 and m["p99_ms"] >= m["p50_ms"] and m["frames_per_s"] > 0 for m in modes.values())
    agree = report["agreement"]
    assert agree["carried_vs_prefix"]["max_abs_diff"] < 1e-3 and agree["window_vs_rerun"]["max_abs_diff"] < 2e-2
    assert report["cnn_dtype"] == "float32" and report["runtime"] == runtime
    assert f"runtime: --runtime {runtime} -> the CNN run by {runtime} in every mode" in res.stdout
    assert "| stream, LSTM state carried | 1.00 | 1.00 |" in res.stdout
