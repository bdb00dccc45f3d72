"""What extraction's decoding threads cost per image, piece by piece, side by side in ONE run.

    python benchmarks/decode_threads.py            # 256 JPEGs of 320x240 (extract_speed.py's frames)
    python benchmarks/decode_threads.py --quick    # seconds: checks that it works (CI), not speed

Measured, each the best of 3 passes, one thread per core at most (torch ops single-threaded inside, as
extraction's decoding threads run them):
  decoding           load_image (libjpeg through torchvision's kernel, no lock) on 1 thread and on every core;
                     and the same with one lock held around each decode, as the warnings-catching wrapper
                     of torchvision's decode_jpeg needed before
  resize             torch's uint8 antialiased resize of the decoded frames, in the decoders' layout
                     (channels_last) and made contiguous first
  transform          seqvision's evaluation transform writing each frame into its row of a batch, against
                     the torchvision chain it replaced (stack, resize, crop, to_dtype, normalize, then the
                     copy into the batch); the outputs are checked equal, bit for bit

Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from extract_speed import make_data  # noqa: E402  (this folder: the same frames)
from seqvision.data.images import load_image  # noqa: E402
from seqvision.data.transforms import ClipTransform, resolve_preprocessing  # noqa: E402
from seqvision.models.backbones import build_backbone  # noqa: E402
from seqvision.runtime import tune_allocator  # noqa: E402


def per_image_ms(work, items: list, threads: int, passes: int = 3) -> float:
    """Wall milliseconds per item of ``work`` mapped over ``items`` by ``threads`` threads (best pass)."""
    best = float("inf")
    with ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        list(pool.map(work, items[:4]))  # warm-up
        for _ in range(passes):
            start = time.perf_counter()
            list(pool.map(work, items))
            best = min(best, (time.perf_counter() - start) / len(items))
    return 1000 * best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few images: checks that it works, not speed")
    args = parser.parse_args()
    tune_allocator()
    from torchvision.transforms.v2 import functional as F

    cores = os.cpu_count() or 1
    prep = resolve_preprocessing(build_backbone("resnet18", weights="none").preprocessing, image_size=224)
    transform = ClipTransform(prep)
    with tempfile.TemporaryDirectory() as tmp:
        paths = sorted(make_data(Path(tmp) / "data", 2 if args.quick else 16, 4 if args.quick else 16, 320, 240).rglob("*.jpg"))
        lock = threading.Lock()

        def locked(path: Path) -> torch.Tensor:
            with lock:
                return load_image(path)

        report: dict = {"benchmark": "decode_threads", "quick": args.quick, "cores": cores, "images": len(paths),
                        "torch": torch.__version__}
        report["decode_1_thread_ms"] = per_image_ms(load_image, paths, 1)
        report["decode_all_cores_ms"] = per_image_ms(load_image, paths, cores)
        report["decode_all_cores_locked_ms"] = per_image_ms(locked, paths, cores)
        frames = [load_image(p) for p in paths]  # (3, H, W) over (H, W, 3) memory, as decoded

        def resize(frame: torch.Tensor) -> torch.Tensor:
            return F.resize(frame[None], [prep.resize_size], interpolation=prep.interpolation_mode, antialias=True)

        report["resize_channels_last_ms"] = per_image_ms(resize, frames, 1)
        report["resize_contiguous_ms"] = per_image_ms(lambda f: resize(f.contiguous()), frames, 1)
        batch = torch.empty((len(frames), 3, prep.image_size, prep.image_size))
        mean, std = list(prep.mean), list(prep.std)

        def before(i: int) -> None:  # the chain ClipTransform ran before, then the copy into the batch
            clip = F.center_crop(F.resize(torch.stack([frames[i]]), [prep.resize_size], interpolation=prep.interpolation_mode, antialias=True),
                                 [prep.image_size, prep.image_size])
            batch[i].copy_(F.normalize(F.to_dtype(clip, torch.float32, scale=True), mean=mean, std=std)[0])

        def now(i: int) -> None:
            transform([frames[i]], out=batch[i : i + 1])

        indices = list(range(len(frames)))
        report["transform_before_ms"] = per_image_ms(before, indices, 1)
        reference = batch.clone()
        batch.fill_(float("nan"))  # so the check below sees only what the current transform wrote
        report["transform_now_ms"] = per_image_ms(now, indices, 1)
        report["transform_outputs_equal"] = bool(torch.equal(batch, reference))

    r = report
    print(f"# extraction's decoding threads, per 320x240 JPEG ({len(paths)} images, {cores} cores, torch {torch.__version__})")
    print("| piece | ms per image |")
    print("|---|---|")
    print(f"| decoding, 1 thread | {r['decode_1_thread_ms']:.3f} |")
    print(f"| decoding, {cores} threads (wall) | {r['decode_all_cores_ms']:.3f} ({r['decode_1_thread_ms'] / r['decode_all_cores_ms']:.2f}x one thread) |")
    print(f"| decoding, {cores} threads with a lock around each decode (wall) | {r['decode_all_cores_locked_ms']:.3f} "
          f"({r['decode_1_thread_ms'] / r['decode_all_cores_locked_ms']:.2f}x one thread) |")
    print(f"| resize, decoders' layout (channels_last) / made contiguous first | {r['resize_channels_last_ms']:.3f} / "
          f"{r['resize_contiguous_ms']:.3f} ({r['resize_contiguous_ms'] / r['resize_channels_last_ms']:.1f}x) |")
    print(f"| evaluation transform into the batch: now / the torchvision chain before | {r['transform_now_ms']:.3f} / "
          f"{r['transform_before_ms']:.3f} ({r['transform_before_ms'] / r['transform_now_ms']:.1f}x); "
          f"outputs equal bit for bit: {r['transform_outputs_equal']} |")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
