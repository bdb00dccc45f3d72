"""benchmarks/decode_threads.py --quick times decoding on one and on every thread, the resize in both layouts and
the evaluation transform against the chain it replaced, whose outputs it checks equal."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "decode_threads.py"


def test_decode_threads_quick_reports_every_piece():
    res = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["images"] == 8 and report["transform_outputs_equal"] is True
    for key in ("decode_1_thread_ms", "decode_all_cores_ms", "decode_all_cores_locked_ms", "resize_channels_last_ms",
                "resize_contiguous_ms", "transform_before_ms", "transform_now_ms"):
        assert report[key] > 0, key
    assert "| evaluation transform into the batch" in res.stdout
