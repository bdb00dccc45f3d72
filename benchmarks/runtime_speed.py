"""The CNN's inference runtimes side by side, in ONE process: what ``--runtime`` and ``--precision int8`` buy.

    python benchmarks/runtime_speed.py            # ResNet-18 and MobileNetV2 at 224 px
    python benchmarks/runtime_speed.py --quick    # a seconds-long smoke run (CI): checks it works, not speed

For each backbone and each installed runtime (torch, ONNX Runtime, OpenVINO, and ONNX Runtime int8),
through seqvision's own ``prepare_encoder`` (the path ``extract``/``predict`` take):

  batch      the CNN alone on ready-made batches of ``--batch`` images, best of 3 rounds, img/s
  one image  one image per call (what ``stream`` does), median of 30 calls, ms
  cosine     min / mean cosine of the runtime's features to torch fp32's on the same images

MobileNetV2 uses the offline ImageNet weights (``../shared/weights``, mean = std = 0.5) when they are
there; ResNet-18's weights are random (no offline copy; speed does not depend on the values, the cosine
then says little about real features). The images are opencv-doc's real photos when installed (else
noise). int8 is calibrated on the first 64 of them, as ``extract`` calibrates on its first batch, and is
refused by seqvision when its features drift below its cosine floor: the row then says so.

The allocator is tuned first, as every ``seqvision`` command that runs a CNN tunes it
(:func:`seqvision.runtime.tune_allocator`): without it glibc returns each batch's activations to the OS and
page-faults them in again, which cost torch's MobileNetV2 at batch 64 3x here (``results/runtime_speed.txt``,
AMD EPYC, 2 cores) and made this table's torch rows slower than any command is.
``SEQVISION_NO_MALLOC_TUNING=1`` runs it with glibc's default, to measure that.

Prints the machine (CPU model and the flags that matter), a table per backbone and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from seqvision.data.transforms import Preprocessing  # noqa: E402
from seqvision.errors import ConfigError  # noqa: E402
from seqvision.features.encode import prepare_encoder  # noqa: E402
from seqvision.features.runtimes import Runtime, installed  # noqa: E402
from seqvision.models.backbones import build_backbone  # noqa: E402
from seqvision.runtime import tune_allocator  # noqa: E402

WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "mobilenet_v2-imagenet.pth"
PHOTOS = Path("/usr/share/doc/opencv-doc/examples/data")
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")


def machine() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "unknown")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    have = [f for f in FLAGS if f in flags]
    return (f"{model}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; flags: {' '.join(have) or 'none'} "
            f"(absent: {' '.join(f for f in FLAGS if f not in flags) or 'none'}); load average {os.getloadavg()[0]:.1f}")


def photos(size: int, count: int, mean: float, std: float) -> torch.Tensor:
    """``(count, 3, size, size)`` normalized: real photos, centre-cropped squares, cycled; noise without them."""
    from PIL import Image

    files = sorted(p for p in PHOTOS.glob("*.jpg")) if PHOTOS.is_dir() else []
    if not files:
        return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(0))
    out = []
    for i in range(count):
        with Image.open(files[i % len(files)]) as im:
            im = im.convert("RGB")
            side = min(im.size)
            left, top = (im.width - side) // 2, (im.height - side) // 2
            im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
        out.append((x - mean) / std)
    return torch.stack(out)


def encoder_of(name: str, size: int):
    """The backbone at ``size`` px (inputs normalized with mean = std = 0.5, what the offline weights expect)
    and the weights it got."""
    weights = str(WEIGHTS) if name == "mobilenet_v2" and WEIGHTS.is_file() else "none"
    torch.manual_seed(0)
    enc = build_backbone(name, weights=weights)
    enc.preprocessing = Preprocessing(size, size, (0.5,) * 3, (0.5,) * 3)
    return enc, weights


def rate(net, images: torch.Tensor, batch: int, rounds: int) -> float:
    """Best img/s over ``rounds`` passes of ``images`` in batches of ``batch`` (one warm-up pass first)."""
    with torch.inference_mode():
        net(images[:batch])
        best = 0.0
        for _ in range(rounds):
            start = time.perf_counter()
            for i in range(0, len(images), batch):
                net(images[i : i + batch])
            best = max(best, len(images) / (time.perf_counter() - start))
    return best


def latency(net, images: torch.Tensor, calls: int) -> float:
    """Median ms of one image per call over ``calls`` calls (after one warm-up call)."""
    with torch.inference_mode():
        net(images[:1])
        times = []
        for i in range(calls):
            start = time.perf_counter()
            net(images[i % len(images)][None])
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    size, batch, rounds, calls, backbones = (64, 8, 1, 3, ("resnet18",)) if args.quick else (224, args.batch, 3, 30, ("resnet18", "mobilenet_v2"))
    count = max(batch, 64)
    tuned = tune_allocator()  # as the CLI does before any big allocation
    print(f"# The CNN's inference runtimes side by side, {size} px, batches of {batch}, one process")
    print(f"command: python benchmarks/runtime_speed.py{' --quick' if args.quick else ''}")
    print(f"machine: {machine()}")
    versions = {"torch": torch.__version__}
    for package in ("onnxruntime", "openvino"):
        if installed(package):
            versions[package] = Runtime.of(package).version
    print(f"versions: {versions}")
    print(f"allocator: {'tuned as seqvision commands tune it (large buffers kept in the heap)' if tuned else 'glibc default (SEQVISION_NO_MALLOC_TUNING=1, or no glibc)'}")
    report = {"benchmark": "runtime_speed", "quick": args.quick, "size": size, "batch": batch, "allocator_tuned": tuned, "results": {}}
    device = torch.device("cpu")
    for name in backbones:
        encoder, weights = encoder_of(name, size)
        images = photos(size, count, 0.5, 0.5)
        reference = prepare_encoder(encoder, device, dtype=torch.float32, runtime="torch")
        with torch.inference_mode():
            want = reference(images)
        rows, results = [], {}
        variants = [("torch", torch.float32)] + [(r, torch.float32) for r in ("onnxruntime", "openvino") if installed(r)]
        if installed("onnxruntime"):
            variants.append(("onnxruntime", torch.int8))
        for runtime, dtype in variants:
            label = f"{runtime}{' int8' if dtype == torch.int8 else ''}"
            try:
                net = prepare_encoder(encoder, device, dtype=dtype, runtime=runtime)
                with torch.inference_mode():
                    got = net(images)  # int8: its first call calibrates on these images
            except ConfigError as exc:
                rows.append(f"| {label} | refused: {str(exc)[:160]} | | | |")
                results[label] = {"refused": str(exc)}
                continue
            cos = torch.nn.functional.cosine_similarity(got.float(), want.float(), dim=1)
            r, ms = rate(net, images, batch, rounds), latency(net, images, calls)
            results[label] = {"images_per_second": r, "one_image_ms": ms, "cosine_min": cos.min().item(), "cosine_mean": cos.mean().item()}
            base = results["torch"]["images_per_second"]
            rows.append(f"| {label} | {r:.1f} ({r / base:.2f}x) | {ms:.1f} | {cos.min().item():.5f} / {cos.mean().item():.5f} |")
        print(f"\n{name} ({'ImageNet weights ' + Path(weights).name if weights != 'none' else 'random weights'}), "
              f"{len(images)} {'real photos' if PHOTOS.is_dir() else 'noise images'}:")
        print("| runtime | batch img/s (x torch) | one image ms (median) | cosine to torch fp32 (min / mean) |")
        print("|---|---|---|---|")
        print("\n".join(rows))
        report["results"][name] = results
    print(json.dumps(report))


if __name__ == "__main__":
    main()
