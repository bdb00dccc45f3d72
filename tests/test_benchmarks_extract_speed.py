"""The extraction benchmark runs (in --quick mode): it checks that it works, not its speed."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "extract_speed.py"


@pytest.mark.slow
def test_extract_speed_quick_runs_and_reports_every_figure():
    res = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    r18 = report["resnet18"]
    for key in ("naive_images_per_s", "seqvision_images_per_s", "speedup_vs_naive", "ceiling_images_per_s",
                "fraction_of_ceiling", "bf16_vs_fp32_min_cosine", "cnn_only_images_per_s", "cnn_only_speedup_bound",
                "seqvision_fp32_images_per_s", "speedup_vs_naive_fp32", "bound_images_per_s", "steady_fraction_of_bound",
                "decode_all_cores_wall_ms_per_image", "bound_as_run_images_per_s", "steady_fraction_of_bound_as_run"):
        assert r18[key] > 0, key
    assert report["conv_peak_gflops"]["fp32"] > 0 and report["conv_peak_gflops"]["bf16"] > 0
    # the naive epoch is measured (PIL + one image per forward, every epoch): slower than cached rows
    assert report["epoch"]["cached_s"] > 0 and report["epoch"]["naive_recompute_s"] > report["epoch"]["cached_s"]
    assert report["epoch"]["train_command_epoch_s"] > 0
    assert {"tuned_images_per_s", "default_images_per_s", "tuned_faults_per_batch"} <= set(report["malloc"])
    # the CPU's model and the flags that change the kernels, printed and in the report
    assert report["machine"]["cpu_model_and_flags"] in res.stdout.splitlines()[0]
    # a row per installed runtime and precision, each with the CNN alone, the whole extraction and its bound
    table = report["runtimes"]["resnet18"]
    assert table["naive_images_per_s"] > 0 and "torch 32" in table["rows"]
    if importlib.util.find_spec("onnxruntime"):
        assert table["rows"]["onnxruntime 32"]["runtime"].startswith("onnxruntime ")
    for label, row in table["rows"].items():
        assert row["dtype"] == ("float32" if label.endswith(" 32") else row["dtype"])
        for key in ("cnn_only_images_per_s", "steady_images_per_s", "bound_images_per_s", "speedup_vs_naive", "speedup_vs_torch_fp32"):
            assert row[key] > 0, (label, key)
    assert table["rows"]["torch 32"]["speedup_vs_torch_fp32"] == 1.0
    assert table["fastest_cnn"] in table["rows"] and table["best_steady_fraction_of_fastest_bound"] > 0
    assert "| torch 32 (torch, float32) |" in res.stdout
