"""benchmarks/video_decoders.py --quick compares PyAV and TorchCodec through read_frames on a small H.264 clip,
a cut Matroska and an MPEG-TS made from OpenCV's real footage (skips without TorchCodec or the footage). Run in
this process: a second interpreter would spend most of the test importing torch and TorchCodec again."""

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
OPENCV = Path("/usr/share/doc/opencv-doc/examples/data")


@pytest.mark.skipif(not (OPENCV / "vtest.avi").is_file(), reason="OpenCV's sample data (Debian opencv-doc) is not installed")
def test_video_decoders_quick_reports_every_clip_and_decoder(monkeypatch, capsys):
    pytest.importorskip("torchcodec.decoders", reason="TorchCodec (and FFmpeg's shared libraries) not installed")
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import video_decoders

    video_decoders.main(["--quick"])
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    assert set(report["results"]) == {"288p H.264 mp4", "288p mkv cut, no index", "288p MPEG-TS, no index"}
    for clip, decoders in report["results"].items():
        assert set(decoders) == {"pyav", "torchcodec", "torchcodec approx"}
        pyav = decoders["pyav"]  # seqvision's default decoder reads every clip, damaged ones too, frame-exact
        assert pyav["seek_right"] == pyav["seeks"] == 8, clip
        assert all(pyav[k] > 0 for k in ("sampled_fps", "sampled_cpu_ms", "sequential_fps", "full_size_fps", "reduced_vs_exact"))
    assert "| 288p H.264 mp4 | torchcodec |" in out and "machine: " in out and "command: python benchmarks/video_decoders.py --quick" in out
