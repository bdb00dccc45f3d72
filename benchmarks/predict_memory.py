"""Peak memory of ``seqvision predict`` on ONE sample of 100, 1,000 and 10,000 images (224 x 224 JPEGs).

Inference loads and encodes a sample in pieces of at most ``--chunk-size`` images and keeps only their
features, so its peak memory should hardly grow with the images in a sample: the target is at most 1.5x
from 1,000 to 10,000 images. Each size runs the real command (``seqvision predict CKPT FOLDER``, default
options: the chunk chosen from the backbone and free memory, the default DataLoader workers) in a fresh
process; its peak resident memory and that of its worker processes are read from ``getrusage``.

The checkpoint: MobileNetV2, frozen, with the real ImageNet weights of ``../shared/weights/`` when they
are there (else random weights, said in the output), trained for one epoch on a few samples. The images:
random 224 x 224 crops of the real photos of Debian's ``opencv-doc`` (else random pixels, said).

    python benchmarks/predict_memory.py [--quick] [--sizes 100 1000 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenet_v2-imagenet.pth"
PHOTOS = Path("/usr/share/doc/opencv-doc/examples/data")
sys.path.insert(0, str(ROOT / "src"))

# runs the CLI in a fresh process and reports its peak RSS and its workers' (kB on Linux)
MEASURE = """
import json, resource, sys, time
from seqvision.cli import main
start = time.perf_counter()
code = main(sys.argv[1:])
seconds = time.perf_counter() - start
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"code": code, "self_kb": me.ru_maxrss, "workers_kb": kids.ru_maxrss, "seconds": seconds}))
"""


def make_images(folder: Path, n: int, seed: int = 0) -> Path:
    """``folder/f0.jpg ...``: 224 x 224 crops of real photos (random pixels when there are none)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sources = []
    for path in sorted(PHOTOS.glob("*.jpg")) if PHOTOS.is_dir() else []:
        with Image.open(path) as im:
            if min(im.size) >= 256:
                sources.append(im.convert("RGB"))
    for t in range(n):
        if sources:
            im = sources[t % len(sources)]
            x, y = rng.randint(0, im.width - 224), rng.randint(0, im.height - 224)
            crop = im.crop((x, y, x + 224, y + 224))
        else:
            crop = Image.fromarray(np.random.default_rng(t).integers(0, 255, (224, 224, 3), dtype=np.uint8))
        crop.save(folder / f"f{t}.jpg", quality=90)
    return folder


def checkpoint(work: Path) -> Path:
    """A frozen MobileNetV2 trained for one epoch on 8 short samples of real crops."""
    from seqvision.cli import main

    data = work / "train"
    for label in ("a", "b"):
        for s in range(4):
            make_images(data / label / f"s{s}", 3, seed=100 + 10 * s + (label == "b"))
    weights = str(WEIGHTS) if WEIGHTS.exists() else "none"
    code = main(["train", "--data", str(data), "--out", str(work / "run"), "--backbone", "mobilenet_v2", "--weights", weights,
                 "--freeze", "--max-epochs", "1", "--val-fraction", "0.25", "--test-fraction", "0", "--no-progress",
                 "--cache", str(work / "cache"), "--diagnostics", "off", "--seed", "0"])
    if code != 0:
        raise SystemExit(f"training the checkpoint failed (exit {code})")
    return work / "run" / "best.ckpt"


def measure(ckpt: Path, sample: Path, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-c", MEASURE, "predict", str(ckpt), str(sample), "--out", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    if proc.returncode != 0:
        raise SystemExit(f"predict failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="samples of 10 and 60 images (a smoke run)")
    parser.add_argument("--sizes", type=int, nargs="+", help="images per sample (default 100 1000 10000)")
    parser.add_argument("--predict-args", nargs=argparse.REMAINDER, default=[], help="more predict options (e.g. --chunk-size 16)")
    args = parser.parse_args()
    sizes = args.sizes or ([10, 60] if args.quick else [100, 1000, 10000])
    import torch

    from seqvision.inference.predictor import Predictor

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}")
    print(f"backbone: frozen mobilenet_v2, weights {'the real ImageNet ' + str(WEIGHTS) if WEIGHTS.exists() else 'random (no shared weights)'}")
    print(f"images: 224x224 JPEG crops of {'the opencv-doc photos' if PHOTOS.is_dir() else 'random pixels'}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt = checkpoint(work)
        chunk = Predictor.load(ckpt).chunk_size
        print(f"default chunk on this machine: {chunk} images per CNN pass and per loaded piece")
        pool = make_images(work / "pool", max(sizes))
        print("| images in the sample | peak RSS, predict process | peak RSS, largest worker | time | images/s |")
        print("|---|---|---|---|---|")
        for n in sizes:
            sample = work / f"sample{n}"
            sample.mkdir()
            for t in range(n):  # the first n images, hard-linked (no copy)
                os.link(pool / f"f{t}.jpg", sample / f"f{t}.jpg")
            got = measure(ckpt, sample, work / f"pred{n}.csv", args.predict_args)
            row = {"images": n, "self_mb": got["self_kb"] / 1024, "workers_mb": got["workers_kb"] / 1024, "seconds": got["seconds"]}
            rows.append(row)
            print(f"| {n} | {row['self_mb']:.0f} MB | {row['workers_mb']:.0f} MB | {row['seconds']:.1f} s | {n / row['seconds']:.1f} |", flush=True)
    growth = {}
    for a, b in zip(rows, rows[1:]):
        growth[f"{a['images']}->{b['images']}"] = round(b["self_mb"] / a["self_mb"], 3)
        print(f"peak RSS of the predict process from {a['images']} to {b['images']} images: x{b['self_mb'] / a['self_mb']:.2f}")
    if not args.quick and len(rows) >= 2:
        ok = rows[-1]["self_mb"] <= 1.5 * rows[-2]["self_mb"]
        print(f"target (at most 1.5x from {rows[-2]['images']} to {rows[-1]['images']} images): {'met' if ok else 'NOT met'}")
    print(json.dumps({"chunk": chunk, "rows": rows, "growth": growth, "date": time.strftime("%Y-%m-%d")}))


if __name__ == "__main__":
    main()
