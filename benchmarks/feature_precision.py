"""bf16 vs fp32 features on real photos, on the path each backbone really runs; and what the oneDNN copy
of a ResNet trunk gains over eager bf16.

- MobileNetV2 with its real ImageNet weights (``../shared/weights/mobilenet_v2-imagenet.pth``): bf16
  features as `extract`/`predict` compute them on this CPU (eager, channels_last: MobileNet's layers do
  not run on oneDNN tensors) against the fp32 features of the same model, and whether the ImageNet class
  the full classifier predicts is the same.
- ResNet-18 on the oneDNN copy that bf16 inference uses for ResNet-like trunks, against eager fp32.
  No ResNet ImageNet weights can be had offline here, so its weights are random (seeded): said in the output.
- Speed of the CNN alone on ready batches of 64, side by side in this process: ResNet-18 bf16 on the
  oneDNN copy vs bf16 eager (channels_last autocast), and fp32 eager.

Photos: the JPEG/PNG photos of Debian's ``opencv-doc`` (baboon, fruits, building, ...). ``--quick``: 4
photos, one timing repeat on batches of 8 (a smoke run: bf16 is emulated, and slow, on CPUs without it).

    python benchmarks/feature_precision.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenet_v2-imagenet.pth"
PHOTOS = Path("/usr/share/doc/opencv-doc/examples/data")
sys.path.insert(0, str(ROOT / "src"))

from seqvision.data.images import load_image  # noqa: E402
from seqvision.data.transforms import ClipTransform, Preprocessing  # noqa: E402
from seqvision.features.encode import OneDNNEncoder, encode_batch, prepare_encoder  # noqa: E402
from seqvision.models.backbones import build_backbone  # noqa: E402
from seqvision.runtime import cpu_has_fast_bf16, tune_allocator  # noqa: E402


def photos(limit: int) -> list[Path]:
    """Real photos: colour JPEG/PNG files of at least 128 px, largest first."""
    from PIL import Image

    found = []
    for path in sorted(PHOTOS.glob("*")):
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        try:
            with Image.open(path) as im:
                if im.mode in ("RGB", "RGBA", "P") and min(im.size) >= 128:
                    found.append((im.size[0] * im.size[1], path))
        except OSError:
            continue
    return [p for _, p in sorted(found, reverse=True)[:limit]]


def batch_of(paths: list[Path], prep: Preprocessing) -> torch.Tensor:
    transform = ClipTransform(prep)
    return torch.cat([transform([load_image(p)]) for p in paths]).contiguous(memory_format=torch.channels_last)


def cosines(a: torch.Tensor, b: torch.Tensor) -> dict:
    c = torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)
    return {"min_cosine": float(c.min()), "mean_cosine": float(c.mean())}


def mobilenet_real(paths: list[Path]) -> dict:
    import torchvision

    prep = Preprocessing(224, 256, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # what these weights expect
    images = batch_of(paths, prep)
    encoder = build_backbone("mobilenet_v2", weights=str(WEIGHTS))
    net = prepare_encoder(encoder, torch.device("cpu"), dtype=torch.bfloat16)  # the path bf16 inference takes
    out = {"path": type(net).__name__ + (" (oneDNN copy)" if isinstance(net, OneDNNEncoder) else " (eager, channels_last)")}
    fp32 = encode_batch(prepare_encoder(encoder, torch.device("cpu"), dtype=torch.float32), images, torch.float32)
    bf16 = encode_batch(net, images, torch.bfloat16)
    out.update(cosines(fp32, bf16))
    classifier = torchvision.models.mobilenet_v2()
    classifier.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    head = classifier.classifier.eval()  # dropout + Linear on the pooled features
    with torch.inference_mode():
        same = (head(fp32.float()).argmax(-1) == head(bf16.float()).argmax(-1)).float().mean()
    out["same_imagenet_class"] = float(same)
    return out


def resnet_onednn(paths: list[Path]) -> dict:
    torch.manual_seed(0)
    encoder = build_backbone("resnet18", weights="none")
    images = batch_of(paths, encoder.preprocessing)
    net = prepare_encoder(encoder, torch.device("cpu"), dtype=torch.bfloat16)
    out = {"path": "OneDNNEncoder (oneDNN copy)" if isinstance(net, OneDNNEncoder) else "eager (the oneDNN copy was not usable here)",
           "weights": "random (seed 0): no ResNet ImageNet weights offline"}
    fp32 = encode_batch(prepare_encoder(encoder, torch.device("cpu"), dtype=torch.float32), images, torch.float32)
    out.update(cosines(fp32, encode_batch(net, images, torch.bfloat16)))
    return out


def speed(repeats: int, batch: int = 64) -> dict:
    """Images/s of ResNet-18 alone on a ready batch of ``batch`` (224 px), best of ``repeats``, three ways."""
    torch.manual_seed(0)
    encoder = build_backbone("resnet18", weights="none")
    images = torch.rand(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    ways = {
        "bf16_onednn": (prepare_encoder(encoder, torch.device("cpu"), dtype=torch.bfloat16), torch.bfloat16),
        "bf16_eager": (prepare_encoder(encoder, torch.device("cpu"), dtype=torch.float32), torch.bfloat16),
        "fp32_eager": (prepare_encoder(encoder, torch.device("cpu"), dtype=torch.float32), torch.float32),
    }
    best = {name: 0.0 for name in ways}
    for name, (net, dtype) in ways.items():
        encode_batch(net, images, dtype)  # warm-up
    for _ in range(repeats):  # interleaved, so the machine's load hits each alike
        for name, (net, dtype) in ways.items():
            start = time.perf_counter()
            encode_batch(net, images, dtype)
            best[name] = max(best[name], batch / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    tune_allocator()
    paths = photos(4 if args.quick else 32)
    if not paths:
        raise SystemExit(f"no photos in {PHOTOS}: apt-get install opencv-doc")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    print(f"{len(paths)} photos from {PHOTOS}; {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"fast bf16: {cpu_has_fast_bf16()}", flush=True)
    report = {"quick": args.quick, "photos": len(paths), "cpu": cpu, "torch": torch.__version__}
    if WEIGHTS.exists():
        report["mobilenet_v2_imagenet"] = m = mobilenet_real(paths)
        print(f"MobileNetV2, real ImageNet weights, bf16 on {m['path']} vs fp32: min cosine {m['min_cosine']:.5f}, "
              f"mean {m['mean_cosine']:.5f}; same ImageNet class for {100 * m['same_imagenet_class']:.0f}% of photos", flush=True)
    else:
        print(f"MobileNetV2: {WEIGHTS} not found, skipped", flush=True)
    report["resnet18"] = r = resnet_onednn(paths)
    print(f"ResNet-18, {r['weights']}, bf16 on {r['path']} vs fp32 eager: min cosine {r['min_cosine']:.5f}, "
          f"mean {r['mean_cosine']:.5f}", flush=True)
    repeats, batch = (1, 8) if args.quick else (5, 64)
    report["resnet18_images_per_s"] = s = speed(repeats, batch)
    print(f"ResNet-18 alone, ready batches of {batch} at 224 px (best of {repeats}): bf16 oneDNN copy "
          f"{s['bf16_onednn']:.1f} img/s, bf16 eager {s['bf16_eager']:.1f} img/s "
          f"({s['bf16_onednn'] / s['bf16_eager']:.2f}x), fp32 eager {s['fp32_eager']:.1f} img/s", flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
