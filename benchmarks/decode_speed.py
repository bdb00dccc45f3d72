"""Extraction on real-size footage: 1080p JPEGs, 12-megapixel JPEGs and a 1080p H.264 video, side by side in ONE run.

    python benchmarks/decode_speed.py            # ResNet-18 at 224 px
    python benchmarks/decode_speed.py --quick    # seconds: checks that it works (CI), not speed

The pictures are real: OpenCV's sample photos (Debian ``opencv-doc``) resized up to 1920x1080 and
4000x3000 (a phone camera's 12 MP) and saved as JPEG quality 90; the video is OpenCV's ``vtest.avi``
(real street footage, 768x576) resized to 1920x1080 and encoded with H.264 (libx264). Upscaled pictures
hold less fine detail than a native 1080p photo, which favours neither decoder. Weights are random (speed
does not depend on them); the cosine rows use the real ImageNet MobileNetV2 of ``../shared/weights/``.

Measured, per input kind:
  naive          the tutorial loop: PIL open + torchvision transforms per image (or PyAV decoding every
                 frame to RGB, then the same transforms), one image per forward pass, fp32
  extract        seqvision's extract_features (default: reduced decoding, bf16 where the CPU is fast at it)
  extract exact  the same with --exact-decode (every pixel decoded, then resized)
  cnn only       the same CNN in the same precision on ready-made 224x224 batches: the bound of any pipeline
  cosine         real MobileNetV2 features of reduced vs exact decoding (mean and minimum over the images)
Targets (issue #16): 1080p JPEG extract >= 4x naive and >= 85 % of cnn only; 1080p video >= 3x naive.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from seqvision.data.discovery import discover  # noqa: E402
from seqvision.data.transforms import ClipTransform, Preprocessing, resolve_preprocessing  # noqa: E402
from seqvision.features.cache import CacheKey, FeatureStore  # noqa: E402
from seqvision.features.extract import extract_features  # noqa: E402
from seqvision.models.backbones import build_backbone  # noqa: E402
from seqvision.runtime import inference_dtype  # noqa: E402
from extract_speed import cnn_only, decode_seconds, naive_extract  # noqa: E402  (this folder: the same naive loop, CNN-alone and decode timing)

OPENCV = Path("/usr/share/doc/opencv-doc/examples/data")
PHOTOS = ["aloeL.jpg", "aloeR.jpg", "building.jpg", "ela_original.jpg", "pca_test1.jpg", "leuvenA.jpg", "leuvenB.jpg",
          "graf1.png", "graf3.png", "rubberwhale1.png", "fruits.jpg", "baboon.jpg", "lena.jpg", "home.jpg"]
WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenet_v2-imagenet.pth"


def make_jpegs(folder: Path, size: tuple[int, int], count: int, per_sample: int) -> Path:
    """``count`` real photos resized (cover + centre crop) to ``size``, as folders of ``per_sample`` JPEGs."""
    photos = [OPENCV / p for p in PHOTOS if (OPENCV / p).is_file()]
    if not photos:
        sys.exit(f"no sample photos in {OPENCV} (Debian package opencv-doc)")
    width, height = size
    for i in range(count):
        img = Image.open(photos[i % len(photos)]).convert("RGB")
        scale = max(width / img.width, height / img.height)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
        left, top = (img.width - width) // 2, (img.height - height) // 2
        out = folder / "c0" / f"s{i // per_sample:03d}" / f"f{i % per_sample:02d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        img.crop((left, top, left + width, top + height)).save(out, quality=90)
    return folder


def make_video(path: Path, frames: int) -> Path:
    """``vtest.avi``'s first ``frames`` frames at 1920x1080, H.264."""
    import av

    source = OPENCV / "vtest.avi"
    if not source.is_file():
        sys.exit(f"{source} not found (Debian package opencv-doc)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(source)) as src, av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        for i, frame in enumerate(src.decode(video=0)):
            if i == frames:
                break
            big = frame.reformat(width=1920, height=1080, format="yuv420p", interpolation="BICUBIC")
            big.pts, big.time_base = i, Fraction(1, 25)  # the source's 10 fps timestamps would play at 10 fps, unevenly
            out.mux(stream.encode(big))
        out.mux(stream.encode(None))
    return path


def naive_video(model: torch.nn.Module, path: Path) -> tuple[float, int]:
    import av
    from torchvision import transforms as T

    transform = T.Compose([T.ToPILImage(), T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                           T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    count = 0
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
        start = time.perf_counter()
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                model(transform(frame.to_ndarray(format="rgb24")).unsqueeze(0))
                count += 1
    return count / (time.perf_counter() - start), count


def seqvision_extract(data: Path, cache: Path, *, exact: bool, num_frames: int | None = None) -> tuple[float, int, float]:
    """extract_features over ``data`` (a folder of samples, or one video) from a cold cache: images/s over the
    wall time (start-up included), the images, and images/s after the first batch (steady state)."""
    encoder = build_backbone("resnet18", weights="none", pool="avg")
    prep = resolve_preprocessing(encoder.preprocessing, exact_decode=exact)
    encoder.preprocessing = prep
    dtype = inference_dtype(torch.device("cpu"), "auto")
    store = FeatureStore(cache, CacheKey.for_encoder(encoder, prep, compute=dtype))
    samples = discover(data, require_labels=False)
    from seqvision.data.sampling import SamplingPolicy

    sampling = [(SamplingPolicy(mode="uniform", num_frames=num_frames), False)] if num_frames else None
    start = time.perf_counter()
    stats = extract_features(samples, encoder, prep, store, batch_size=64, device="cpu", precision="auto", progress=False,
                             sampling=sampling)
    return stats.images / (time.perf_counter() - start), stats.images, stats.steady_images_per_second


def video_decode_seconds(video: Path) -> float:
    """CPU seconds per frame of the reduced video decoding and the transform, on one thread (as
    ``extract_speed.decode_seconds`` measures images): the work that shares the cores with the CNN."""
    from seqvision.data.video import probe_video, read_frames

    transform = ClipTransform(Preprocessing(224, 256))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        info = probe_video(video)
        start = time.process_time()
        frames, _ = read_frames(video, [info.frame_time(i) for i in range(info.num_frames)], info.fps, decode_size=transform.decode_size)
        transform(frames)
        return (time.process_time() - start) / info.num_frames
    finally:
        torch.set_num_threads(threads)


def cosines(paths: list[Path], video: Path | None) -> dict[str, float] | None:
    """Real MobileNetV2 features, reduced vs exact decoding: mean and min cosine (images, then video frames)."""
    from seqvision.data.images import load_image
    from seqvision.data.video import probe_video, read_frames

    if not WEIGHTS.is_file():
        return None
    encoder = build_backbone("mobilenet_v2", weights=str(WEIGHTS)).eval()
    kw = dict(image_size=224, resize_size=256, mean=(0.5,) * 3, std=(0.5,) * 3)
    fast, exact = ClipTransform(Preprocessing(**kw)), ClipTransform(Preprocessing(**kw, decode="exact"))
    a = torch.cat([fast([load_image(p, decode_size=fast.decode_size)]) for p in paths])
    b = torch.cat([exact([load_image(p)]) for p in paths])
    if video is not None:
        info = probe_video(video)
        times = [info.frame_time(i) for i in range(0, info.num_frames, max(1, info.num_frames // 8))]
        a = torch.cat([a, fast(read_frames(video, times, info.fps, decode_size=fast.decode_size)[0])])
        b = torch.cat([b, exact(read_frames(video, times, info.fps)[0])])
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(encoder(a), encoder(b))
    return {"mean": float(cos.mean()), "min": float(cos.min()), "n": len(cos)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    import torchvision

    naive_model = torchvision.models.resnet18(weights=None)
    naive_model.fc = torch.nn.Identity()
    naive_model.eval()
    n_hd, n_12mp, n_video = (8, 2, 6) if args.quick else (256, 16, 48)  # 256: four batches, three of them steady
    print("# Extraction on real-size footage: naive loop vs seqvision extract vs the CNN alone (ResNet-18, 224 px)")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}; torch {torch.__version__}; "
          f"load average at the start: {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"precision: naive fp32; extract and cnn only {str(inference_dtype(torch.device('cpu'), 'auto')).removeprefix('torch.')}")
    rows, results = [], {}
    with tempfile.TemporaryDirectory(prefix="seqvision-decode-") as tmp:
        tmp = Path(tmp)
        hd = make_jpegs(tmp / "hd", (1920, 1080), n_hd, 8)
        mp12 = make_jpegs(tmp / "12mp", (4000, 3000), n_12mp, 8)
        video = make_video(tmp / "video" / "c0" / "street.mp4", n_video)
        cnn = cnn_only("resnet18", 224, 8 if args.quick else 64, args.quick)
        for name, data, count in (("1080p JPEG", hd, n_hd), ("12 MP JPEG", mp12, n_12mp), ("1080p H.264 video", video.parent.parent, n_video)):
            paths = sorted(data.rglob("*.jpg"))
            if paths:
                naive = naive_extract("resnet18", paths[:64], 224)  # the slow loop on the first 64 images
            else:
                naive, count = naive_video(naive_model, video)
            frames = count if not paths else None
            fast, n, steady = seqvision_extract(data, tmp / f"cache-{name}", exact=False, num_frames=frames)
            exact, _, _ = seqvision_extract(data, tmp / f"cache-{name}-exact", exact=True, num_frames=frames)
            decode = decode_seconds(paths[:32], 224) if paths else video_decode_seconds(video)
            bound = 1.0 / (1.0 / cnn + decode / (os.cpu_count() or 1))  # the CNN's time per image plus the decoding's
            results[name] = {"images": n, "naive": naive, "extract": fast, "extract_steady": steady, "extract_exact": exact,
                             "cnn_only": cnn, "decode_ms": 1000 * decode, "bound": bound}
            steady_cell = f"{steady:.1f}" if n > 64 else "-"
            rows.append(f"| {name} | {n} | {naive:.1f} | {fast:.1f} ({fast / naive:.1f}x) | {steady_cell} | {exact:.1f} ({exact / naive:.1f}x) | "
                        f"{cnn:.1f} | {1000 * decode:.1f} | {bound:.1f} |")
            print(f"  {name}: naive {naive:.1f}, extract {fast:.1f} (steady {steady:.1f}), exact {exact:.1f}, cnn only {cnn:.1f} img/s; "
                  f"decoding {1000 * decode:.1f} ms of CPU per image", flush=True)
        cos = cosines(sorted(hd.rglob("*.jpg"))[:8] + sorted(mp12.rglob("*.jpg"))[:4], video)
    print()
    print("| input | images | naive img/s | extract img/s (x naive) | extract, steady | extract --exact-decode | cnn only | "
          "decoding, CPU ms / image | bound: cnn only + decoding |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if cos:
        print(f"\nreal MobileNetV2 features, reduced vs exact decoding: cosine mean {cos['mean']:.4f}, min {cos['min']:.4f} "
              f"over {cos['n']} images and frames")
    hd_r, video_r = results["1080p JPEG"], results["1080p H.264 video"]
    print(f"targets: 1080p JPEG {hd_r['extract'] / hd_r['naive']:.1f}x naive (>= 4x); its steady extraction {hd_r['extract_steady'] / hd_r['cnn_only']:.0%} "
          f"of cnn only (>= 85 %) and {hd_r['extract_steady'] / hd_r['bound']:.0%} of the bound with decoding on these "
          f"{os.cpu_count()} cores; 1080p video {video_r['extract'] / video_r['naive']:.1f}x naive (>= 3x)")
    print(f"load average at the end: {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(json.dumps({"benchmark": "decode_speed", "quick": args.quick, "results": results, "cosine": cos}))


if __name__ == "__main__":
    main()
