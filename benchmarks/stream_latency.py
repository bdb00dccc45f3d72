"""Per-frame latency of ``seqvision stream``: carried LSTM state vs re-running the model on a window every frame.

    python benchmarks/stream_latency.py            # 200 frames of vtest.avi, window 16, MobileNetV2 at 224 px
    python benchmarks/stream_latency.py --quick    # a seconds-long smoke run (CI): checks it works, not speed
    python benchmarks/stream_latency.py --precision 32 --runtime onnxruntime   # the CNN on another runtime

Real frames: OpenCV's sample clip ``vtest.avi`` (768x576, 10 fps; Debian's ``opencv-doc``), skipped with a
message when it is not installed. The model: a frozen MobileNetV2 with the real ImageNet weights of
``../shared/weights/`` (random weights when they are missing, said in the output) and an LSTM head,
trained by ``seqvision train`` for one epoch on a few clips of the same video (the speed and the
agreement of the modes do not depend on how well it learned). Three modes side by side on the same
decoded frames, in one process: each frame goes through the three in turn, so a change in the load of
the machine hits all three alike:

  carried     ``Stream``: one CNN forward per frame and one LSTM step with the state carried (the
              output = the model on every frame so far)
  window      ``Stream(window=W)``: one CNN forward per frame, the head re-run on the last W frames' kept
              features (the output = the model on the last W frames)
  re-run      the model re-run on the last W frames every frame: W images through the CNN per frame
              (their preprocessing is kept, so only the CNN and the head are repeated)

Latency is per frame from the decoded RGB frame to the prediction (preprocessing, CNN, heads), after a
few warm-up frames. Agreement: ``window`` must equal ``re-run`` (the same frames and model; only the
CNN's batch size differs), and ``carried`` must equal the model given each whole prefix at once.
Prints its settings, a table and, last, one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenet_v2-imagenet.pth"
VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from seqvision.config import RUNTIME_CHOICES  # noqa: E402
from seqvision.features.encode import encode_batch  # noqa: E402
from seqvision.inference.predictor import Predictor  # noqa: E402
from seqvision.streaming.sources import open_source  # noqa: E402
from seqvision.streaming.stream import Stream  # noqa: E402

WARMUP = 3  # frames run before timing each mode (first-call allocations, oneDNN primitive creation)


def decode(count: int, start: int = 0) -> list[torch.Tensor]:
    """Frames ``start .. start + count - 1`` of the video as (3, H, W) uint8."""
    source = open_source(VIDEO)
    try:
        return [item.frame for item, _ in zip((i for i in source if i.index >= start), range(count))]
    finally:
        source.close()


def checkpoint(work: Path, frames: list[torch.Tensor], *, image_size: int, window: int) -> Path:
    """A frozen MobileNetV2 + LSTM trained for one epoch on 8 clips of 4 frames: the early and the late part
    of the video as two classes (the ImageNet weights want mean = std = 0.5, see ../shared/weights/README)."""
    from PIL import Image

    from seqvision.cli import main

    for s in range(8):
        label, clip = ("early", "late")[s % 2], frames[4 * s : 4 * s + 4]
        folder = work / "train" / label / f"s{s}"
        folder.mkdir(parents=True)
        for t, frame in enumerate(clip):
            Image.fromarray(frame.permute(1, 2, 0).numpy()).save(folder / f"f{t}.jpg", quality=90)
    weights = str(WEIGHTS) if WEIGHTS.exists() else "none"
    code = main(["train", "--data", str(work / "train"), "--out", str(work / "run"), "--backbone", "mobilenet_v2",
                 "--weights", weights, "--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5", "--freeze",
                 "--image-size", str(image_size), "--num-frames", str(window), "--max-epochs", "1", "--val-fraction", "0.25",
                 "--test-fraction", "0", "--no-progress", "--cache", str(work / "cache"), "--diagnostics", "off", "--seed", "0"])
    if code != 0:
        raise SystemExit(f"training the checkpoint failed (exit {code})")
    return work / "run" / "best.ckpt"


class Rerun:
    """The model re-run on the last ``window`` frames every frame (the baseline): ``push`` like a Stream."""

    def __init__(self, predictor: Predictor, window: int) -> None:
        self.transform = Stream(predictor).transform
        self.net, self.dtype, self.model = predictor._inference_encoder(), predictor.compute_dtype, predictor.model
        self.window = window
        self.reset()

    def reset(self) -> None:
        self.kept: deque[torch.Tensor] = deque(maxlen=self.window)  # (3, S, S) preprocessed images of the last frames
        self.cnn_calls = self.cnn_images = 0
        self.last_output: torch.Tensor | None = None

    @torch.inference_mode()
    def push(self, frame: torch.Tensor) -> None:
        self.kept.append(self.transform([frame])[0])  # each frame preprocessed once (kept: fair to the baseline)
        batch = torch.stack(tuple(self.kept))  # (n, 3, S, S)
        features = encode_batch(self.net, batch, self.dtype)  # (n, F): the whole window through the CNN again
        self.last_output = self.model.forward_features(features, torch.tensor([len(batch)]))[-1].float().cpu()  # (K,)
        self.cnn_calls, self.cnn_images = self.cnn_calls + 1, self.cnn_images + len(batch)


def run_side_by_side(runners: dict, frames: list[torch.Tensor]) -> tuple[dict, dict]:
    """Each frame through every runner in turn (so a change in the machine's load hits all alike), after a
    warm-up on the first frames: seconds per frame and outputs (K,) per runner."""
    for frame in frames[:WARMUP]:
        for runner in runners.values():
            runner.push(frame)
    for runner in runners.values():
        runner.reset()
    seconds = {name: [] for name in runners}
    outputs = {name: [] for name in runners}
    for frame in frames:
        for name, runner in runners.items():
            start = time.perf_counter()
            runner.push(frame)
            seconds[name].append(time.perf_counter() - start)
            outputs[name].append(runner.last_output)
    return seconds, outputs


@torch.inference_mode()
def prefix_outputs(predictor: Predictor, frames: list[torch.Tensor], stream: Stream) -> list[torch.Tensor]:
    """The model on each whole prefix at once, from the features of every frame encoded one by one."""
    features = torch.stack([stream.encode(f) for f in frames])  # (T, F), the same CNN calls as the stream's
    model = predictor.model
    return [model.forward_features(features[: t + 1], torch.tensor([t + 1]))[-1].float().cpu() for t in range(len(frames))]


def figures(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50_ms": 1000 * statistics.median(ordered), "p99_ms": 1000 * p99, "frames_per_s": len(seconds) / sum(seconds)}


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor], predictor: Predictor) -> tuple[float, float]:
    """Largest difference of the user-facing values (probabilities), and the share of equal predictions."""
    va, vb = predictor.task.values(torch.stack(a)), predictor.task.values(torch.stack(b))
    return float((va - vb).abs().max()), float((va.argmax(-1) == vb.argmax(-1)).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 frames, window 4, 64 px images (a smoke run)")
    parser.add_argument("--frames", type=int, help="frames streamed (default 200; quick 12)")
    parser.add_argument("--window", type=int, help="frames of the window (default 16; quick 4)")
    parser.add_argument("--image-size", type=int, help="CNN input size (default 224; quick 64)")
    parser.add_argument("--precision", choices=["auto", "32", "bf16"], default="auto", help="the CNN's (default: %(default)s)")
    parser.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto", help="what runs the CNN, as for "
                        "`seqvision stream --runtime` (default: %(default)s)")
    args = parser.parse_args()
    if not VIDEO.exists():
        print(f"skipped: {VIDEO} is not installed (Debian: apt-get install opencv-doc)")
        print(json.dumps({"skipped": f"{VIDEO} missing"}))
        return
    n, window = args.frames or (12 if args.quick else 200), args.window or (4 if args.quick else 16)
    size = args.image_size or (64 if args.quick else 224)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = checkpoint(Path(tmp), decode(32, start=400), image_size=size, window=window)
        predictor = Predictor.load(ckpt, precision=args.precision, runtime=args.runtime)
    frames = decode(n)
    report = measure(predictor, frames, window)
    report.update(frames=n, window=window, image_size=size, weights="imagenet" if WEIGHTS.exists() else "random",
                  runtime=getattr(predictor._inference_encoder(), "runtime", "torch"))  # what ran: an engine names itself
    print_report(report, predictor, frames[0].shape, args.precision, args.runtime)
    print(json.dumps(report))


def measure(predictor: Predictor, frames: list[torch.Tensor], window: int) -> dict:
    runners = {"carried": Stream(predictor), "window": Stream(predictor, window=window), "rerun": Rerun(predictor, window)}
    seconds, outputs = run_side_by_side(runners, frames)
    n = len(frames)
    modes = {}
    for name, runner in runners.items():
        images = getattr(runner, "cnn_images", runner.cnn_calls)  # a Stream's forwards take one image each
        modes[name] = {"cnn_forwards_per_frame": runner.cnn_calls / n, "cnn_images_per_frame": images / n, **figures(seconds[name])}
    out_carried, out_window, out_rerun = outputs["carried"], outputs["window"], outputs["rerun"]
    prefix = prefix_outputs(predictor, frames, Stream(predictor))
    agreement = {
        "window_vs_rerun": max_diff(out_window, out_rerun, predictor),
        "carried_vs_prefix": max_diff(out_carried, prefix, predictor),
        "carried_vs_window": max_diff(out_carried, out_window, predictor),
    }
    return {"modes": modes, "agreement": {k: {"max_abs_diff": d, "same_prediction": s} for k, (d, s) in agreement.items()},
            "cnn_dtype": str(predictor.compute_dtype).removeprefix("torch."), "date": time.strftime("%Y-%m-%d")}


def print_report(report: dict, predictor: Predictor, shape: tuple, precision: str, runtime: str) -> None:
    cnn = report["cnn_dtype"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; "
          f"torch {torch.__version__}")
    print(f"video: {VIDEO.name}, {report['frames']} frames of {shape[2]}x{shape[1]}, decoded before timing")
    print(f"model: frozen mobilenet_v2 ({report['weights']} weights) at {report['image_size']} px + LSTM "
          f"(hidden {predictor.cfg.model.hidden_size}), window {report['window']} frames")
    print(f"precision: --precision {precision} -> CNN in {cnn} on every side; LSTM and task heads in float32")
    print(f"runtime: --runtime {runtime} -> the CNN run by {report['runtime']} in every mode")
    print()
    print("| mode | CNN forwards / frame | CNN images / frame | p50 latency | p99 latency | frames/s | precision |")
    print("|---|---|---|---|---|---|---|")
    names = {"carried": "stream, LSTM state carried", "window": f"stream, window {report['window']} (features reused)",
             "rerun": f"re-run the model on the last {report['window']} frames"}
    for key, m in report["modes"].items():
        print(f"| {names[key]} | {m['cnn_forwards_per_frame']:.2f} | {m['cnn_images_per_frame']:.2f} | {m['p50_ms']:.1f} ms | "
              f"{m['p99_ms']:.1f} ms | {m['frames_per_s']:.1f} | CNN {cnn}, heads float32 |")
    print()
    a = report["agreement"]
    print(f"window vs re-run (should agree: same frames, same model): max |dp| {a['window_vs_rerun']['max_abs_diff']:.2e}, "
          f"same prediction {100 * a['window_vs_rerun']['same_prediction']:.0f}%")
    print(f"carried vs the model on each whole prefix (should agree): max |dp| {a['carried_vs_prefix']['max_abs_diff']:.2e}, "
          f"same prediction {100 * a['carried_vs_prefix']['same_prediction']:.0f}%")
    print(f"carried vs window (differ by design: all frames so far vs the last {report['window']}): max |dp| "
          f"{a['carried_vs_window']['max_abs_diff']:.2e}, same prediction {100 * a['carried_vs_window']['same_prediction']:.0f}%")
    speed = report["modes"]["rerun"]["p50_ms"] / report["modes"]["carried"]["p50_ms"]
    print(f"re-running the window costs {speed:.2f}x the carried stream's median latency per frame")


if __name__ == "__main__":
    main()
