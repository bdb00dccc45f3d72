"""One short GPU run: JPEG decoding on the GPU overlapped with a bf16 channels_last CNN, extraction images/s for
ResNet-18 and ResNet-50 end to end from 1080p JPEGs, the CNN alone, ``seqvision``'s own extraction (CPU decoding
in DataLoader workers) of the same files, and a training-step time. Prints ONE JSON line.

    python benchmarks/gpu.py              # on a CUDA machine; finishes in well under 5 minutes
    python benchmarks/gpu.py --dry-run    # a few small images on the CPU: checks the script runs (the test suite)

Pipeline per batch: the JPEG files' bytes (in memory: disk reads are not timed) -> ``torchvision.io.decode_jpeg(..., device="cuda")``
(nvJPEG, batched) on a side stream -> resize (shorter side 256, antialiased) and centre crop 224 on the GPU ->
normalize -> bf16, channels_last -> the CNN. The next batch decodes while the CNN runs the current one.
Goal (issue #16): >= 10,000 images/s ResNet-18 extraction end to end on one H200. Weights are random
(speed does not depend on them). Each figure is the best of a few timed passes after a warm-up.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

OPENCV_PHOTO = Path("/usr/share/doc/opencv-doc/examples/data/aloeL.jpg")


def jpeg_bytes(count: int, size: tuple[int, int]) -> list[torch.Tensor]:
    """``count`` JPEGs of ``size`` (a real photo, resized, shifted per image; a smooth pattern without it)."""
    width, height = size
    if OPENCV_PHOTO.is_file():
        base = np.asarray(Image.open(OPENCV_PHOTO).convert("RGB").resize((width + 64, height + 64)))
    else:
        y, x = np.mgrid[0 : height + 64, 0 : width + 64]
        base = np.stack([(x + y) % 256, (2 * x) % 256, (3 * y) % 256], -1).astype(np.uint8)
    out = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(base[i % 64 : i % 64 + height, i % 64 : i % 64 + width]).save(buffer, format="JPEG", quality=90)
        out.append(torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8))
    return out


def preprocess(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """Decoded ``(3, H, W)`` uint8 images -> ``(N, 3, size, size)`` normalized, channels_last. Images of one
    size are resized as one batch: a few kernels per batch, not a few per image (launches would bound it)."""
    from torchvision.transforms.v2 import functional as F

    resize = [round(size * 256 / 224)]
    if len({tuple(im.shape) for im in images}) == 1:
        batch = F.center_crop(F.resize(torch.stack(images), resize, antialias=True), [size, size])
    else:
        batch = torch.stack([F.center_crop(F.resize(im, resize, antialias=True), [size, size]) for im in images])
    batch = F.normalize(batch.float().div_(255), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    return batch.contiguous(memory_format=torch.channels_last)


def model_of(name: str, device: torch.device) -> torch.nn.Module:
    import torchvision

    model = torchvision.models.get_model(name, weights=None)
    model.fc = torch.nn.Identity()
    return model.to(device, memory_format=torch.channels_last).eval()


def extraction(name: str, files: list[torch.Tensor], batch: int, device: torch.device, passes: int) -> float:
    """End-to-end images/s: GPU decode of batch k+1 (side stream) overlapped with the CNN on batch k."""
    from torchvision.io import decode_jpeg

    model = model_of(name, device)
    cuda = device.type == "cuda"
    side = torch.cuda.Stream() if cuda else None
    dtype = torch.bfloat16 if cuda else torch.float32

    def decode(chunk: list[torch.Tensor]) -> torch.Tensor:
        if cuda:
            with torch.cuda.stream(side):
                return preprocess(decode_jpeg(chunk, device=device), 224)
        return preprocess([decode_jpeg(c) for c in chunk], 224)

    chunks = [files[i : i + batch] for i in range(0, len(files), batch)]
    best = 0.0
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=cuda):
        for _ in range(passes + 1):  # the first pass warms up (cuDNN autotuning, nvJPEG handles)
            start = time.perf_counter()
            ready = decode(chunks[0])
            for k in range(len(chunks)):
                current = ready
                if cuda:
                    torch.cuda.current_stream().wait_stream(side)
                    current.record_stream(torch.cuda.current_stream())  # made on the side stream, used here
                if k + 1 < len(chunks):
                    ready = decode(chunks[k + 1])  # queued on the side stream while the CNN runs
                model(current)
            if cuda:
                torch.cuda.synchronize()
            best = max(best, len(files) / (time.perf_counter() - start))
    return best


def cnn_only(name: str, batch: int, device: torch.device, passes: int) -> float:
    model = model_of(name, device)
    cuda = device.type == "cuda"
    x = torch.randn(batch, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    best = 0.0
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
        for _ in range(passes + 1):
            start = time.perf_counter()
            for _ in range(4):
                model(x)
            if cuda:
                torch.cuda.synchronize()
            best = max(best, 4 * batch / (time.perf_counter() - start))
    return best


def seqvision_extract(files: list[torch.Tensor], device: torch.device, batch: int) -> dict:
    """``seqvision.extract_features`` as users run it (ResNet-18, default precision and loaders: CPU
    decoding in DataLoader workers) on the same JPEGs written to disk as 16-frame samples: the library's own
    end-to-end images/s, beside the GPU-decoding pipeline above."""
    import tempfile

    from seqvision.data.discovery import discover
    from seqvision.data.transforms import resolve_preprocessing
    from seqvision.features.cache import CacheKey, FeatureStore
    from seqvision.features.extract import extract_features
    from seqvision.models.backbones import build_backbone
    from seqvision.runtime import inference_dtype

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        for i, data in enumerate(files):
            path = root / "c" / f"s{i // 16:04d}" / f"f{i % 16:02d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data.numpy().tobytes())
        encoder = build_backbone("resnet18", weights="none")
        prep = resolve_preprocessing(encoder.preprocessing, image_size=224)
        store = FeatureStore(Path(tmp) / "cache", CacheKey.for_encoder(encoder, prep, compute=inference_dtype(device)))
        start = time.perf_counter()
        stats = extract_features(discover(root), encoder, prep, store, batch_size=batch, device=device, progress=False)
        wall = time.perf_counter() - start
    return {"images_per_s": stats.images / wall, "steady_images_per_s": stats.steady_images_per_second, "dtype": stats.dtype}


def training_step(device: torch.device, samples: int, frames: int, passes: int) -> float:
    """Seconds per optimizer step of ResNet-18 (fine-tuned) + LSTM on ``samples`` x ``frames`` images, bf16 autocast."""
    from seqvision.models.sequence_model import build_sequence_model

    model = build_sequence_model(10, backbone="resnet18", weights="none").to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(samples * frames, 3, 224, 224, device=device).contiguous(memory_format=torch.channels_last)
    lengths = torch.full((samples,), frames)
    targets = torch.randint(0, 10, (samples,), device=device)
    cuda = device.type == "cuda"
    best = float("inf")
    for _ in range(passes + 1):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = torch.nn.functional.cross_entropy(model(images, lengths), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="a few small images on the CPU (the test suite)")
    args = parser.parse_args()
    began = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.dry_run
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cudnn.benchmark = True
    count, size, batch, passes = (2048, (1920, 1080), 256, 3) if cuda else (8, (320, 180), 4, 1)
    report: dict = {"benchmark": "gpu", "dry_run": args.dry_run, "device": torch.cuda.get_device_name() if cuda else "cpu",
                    "torch": torch.__version__, "images": count, "image_size": list(size), "batch": batch, "errors": {}}
    files = jpeg_bytes(count, size)
    report["jpeg_megabytes"] = round(sum(len(f) for f in files) / 1e6, 1)
    for name in ("resnet18", "resnet50"):
        for key, run in ((f"{name}_extract_img_s", lambda: extraction(name, files, batch, device, passes)),
                         (f"{name}_cnn_only_img_s", lambda: cnn_only(name, batch, device, passes))):
            try:
                report[key] = round(run(), 1)
            except Exception as exc:  # noqa: BLE001 - one failing part must not hide the others' figures
                report["errors"][key] = f"{type(exc).__name__}: {str(exc)[:200]}"
    try:
        library = seqvision_extract(files, device, batch)
        report["seqvision_extract_resnet18_img_s"] = round(library["images_per_s"], 1)
        report["seqvision_extract_resnet18_steady_img_s"] = round(library["steady_images_per_s"], 1)
        report["seqvision_extract_dtype"] = library["dtype"]
    except Exception as exc:  # noqa: BLE001
        report["errors"]["seqvision_extract_resnet18_img_s"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    try:
        samples, frames = (32, 16) if cuda else (2, 2)
        report["train_step_s"] = round(training_step(device, samples, frames, passes), 4)
        report["train_step_images"] = samples * frames
    except Exception as exc:  # noqa: BLE001
        report["errors"]["train_step_s"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    report["seconds"] = round(time.perf_counter() - began, 1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
