"""Extraction speed, the machine's ceiling, and what the feature cache saves — measured in ONE run.

    python benchmarks/extract_speed.py            # ResNet-18 (+ ResNet-50), 64 samples x 16 JPEGs of 320x240
    python benchmarks/extract_speed.py --quick    # a seconds-long smoke run (CI): checks it works, not speed

Prints a human-readable table and, last, one JSON line with every figure. Weights are random (no
download): speed does not depend on the weight values.

Measured:
  naive      the seed's recipe: PIL + torchvision transforms per image, one image per forward pass, fp32
  seqvision  seqvision's extract_features: batched across samples, bf16 where fast, BatchNorm folded and
             oneDNN's blocked layout (ResNets on CPU; else channels_last eager), JPEG decoding on every
             core between CNN batches, features streamed to the cache
  cnn only   the same CNN in the same precision on ready-made batches (no decoding, no cache): what no
             extraction pipeline on this machine can beat without a faster CNN, so cnn_only / naive
             bounds the speedup over the naive loop
  ceiling    the machine's own conv peak (bf16 and fp32, GFLOP/s) / the backbone's GFLOP per image
  epoch      one frozen-backbone training epoch (LSTM head, AdamW) recomputing CNN features (naive per
             image, and seqvision's batched live path) vs reading the feature cache; and the epoch of
             `seqvision train --freeze` itself (Lightning, validation and checkpoints included)
  malloc     seqvision extraction in a fresh process with and without seqvision's allocator tuning
  runtimes   per backbone (``--runtime-backbones``, default ResNet-18 and MobileNetV2), every installed
             runtime and precision side by side (torch at auto where that is bf16, and at 32; ONNX Runtime
             and OpenVINO at 32; ONNX Runtime int8): the CNN alone, the whole extraction (steady, after
             the first batch) as ``seqvision extract --runtime R --precision P`` runs it, x the naive loop,
             x torch fp32's extraction, and the share of the bound made of that CNN alone plus the decoding

The machine line names the CPU's model and the flags that change the kernels (AVX-512, VNNI, bf16, AMX).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from seqvision.config import ModelConfig  # noqa: E402
from seqvision.data.dataset import SequenceDataset, collate  # noqa: E402
from seqvision.data.discovery import discover  # noqa: E402
from seqvision.tasks import TargetSpec  # noqa: E402
from seqvision.data.transforms import ClipTransform  # noqa: E402
from seqvision.features.cache import CacheKey, FeatureStore  # noqa: E402
from seqvision.features.dataset import cached_dataset  # noqa: E402
from seqvision.features.extract import extract_features  # noqa: E402
from seqvision.models.sequence_model import build_sequence_model  # noqa: E402
from seqvision.runtime import inference_dtype, tune_allocator  # noqa: E402


def make_data(root: Path, samples: int, frames: int, width: int, height: int) -> Path:
    """Deterministic JPEG frame folders: ROOT/c<k>/s<i>/f<t>.jpg with moving gradients and noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(samples):
        folder = root / f"c{i % 2}" / f"s{i:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, 3)
        for t in range(frames):
            img = np.stack([(xx * (c + 1) + yy + 9 * t + base[c]) % 256 for c in range(3)], -1).astype(np.uint8)
            img = np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"f{t}.jpg", quality=90)
    return root


def conv_flops(model: torch.nn.Module, size: int) -> float:
    """FLOPs (2 x multiply-adds) of the convolutions and linear layers for one size x size image."""
    total = 0.0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += 2.0 * k * output.numel()
        elif isinstance(module, torch.nn.Linear):
            total += 2.0 * module.in_features * output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.inference_mode():
        model.eval()(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return total


def conv_peak(dtype: torch.dtype, quick: bool) -> float:
    """The best GFLOP/s of large 3x3 convolutions (channels_last, inference) in ``dtype``."""
    best = 0.0
    # ResNet-like layer shapes (batch, channels, size); the best of them is the machine's peak
    shapes = [(64, 64, 56), (64, 128, 28), (64, 256, 14), (64, 512, 7), (32, 256, 28)] if not quick else [(4, 64, 28)]
    for n, c, hw in shapes:
        conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).to(memory_format=torch.channels_last).eval()
        x = torch.randn(n, c, hw, hw).contiguous(memory_format=torch.channels_last)
        flops = 2.0 * n * hw * hw * c * c * 9
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            for _ in range(2):
                conv(x)
            for _ in range(3 if quick else 6):
                start = time.perf_counter()
                conv(x)
                best = max(best, flops / (time.perf_counter() - start) / 1e9)
    return best


def naive_extract(backbone: str, paths: list[Path], size: int) -> float:
    """The tutorial loop: one image per forward pass, PIL + torchvision transforms, fp32. Returns images/s."""
    import torchvision
    from torchvision import transforms as T

    model = torchvision.models.get_model(backbone, weights=None)
    for head in ("fc", "classifier"):  # ResNets' and MobileNetV2's: features, as extraction gives
        if hasattr(model, head):
            setattr(model, head, torch.nn.Identity())
    model.eval()
    transform = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(),
                           T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    with torch.no_grad():
        model(transform(Image.open(paths[0]).convert("RGB")).unsqueeze(0))  # warm-up
        start = time.perf_counter()
        for p in paths:
            model(transform(Image.open(p).convert("RGB")).unsqueeze(0))
    return len(paths) / (time.perf_counter() - start)


def seqvision_extract(
    backbone: str, data: Path, cache: Path, size: int, batch: int, compile: bool = False, precision: str = "auto",
    runtime: str = "torch",
) -> dict:
    """seqvision's extraction of every image, wall time including loader start-up. Returns figures.
    ``precision``: auto (bf16 where the CPU is fast at it: what users get), 32 (to compare fp32 with fp32)
    or int8; ``runtime``: what runs the CNN, as ``seqvision extract --runtime`` (its key names it)."""
    samples = discover(data)
    model = build_sequence_model(2, backbone=backbone, weights="none", freeze=True)
    from seqvision.data.transforms import resolve_preprocessing
    from seqvision.features.runtimes import runtime_for_cache

    prep = resolve_preprocessing(model.encoder.preprocessing, image_size=size)
    model.encoder.preprocessing = prep  # as `seqvision extract`: the engines' probes run at the size extracted
    dtype = inference_dtype(torch.device("cpu"), precision)
    key = CacheKey.for_encoder(model.encoder, prep, compute=dtype)
    ran = runtime_for_cache(runtime, model.encoder, torch.device("cpu"), dtype, key=key, root=cache)
    store = FeatureStore(cache, dataclasses.replace(key, runtime=ran.label))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    stats = extract_features(samples, model.encoder, prep, store, batch_size=batch, precision=precision, progress=False, compile=compile)
    wall = time.perf_counter() - start
    return {
        "images": stats.images, "images_per_s": stats.images / wall, "dtype": stats.dtype, "runtime": stats.runtime,
        "steady_images_per_s": stats.steady_images_per_second,
        "page_faults_per_batch": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / max(1, -(-stats.images // batch)),
    }


def cnn_only(backbone: str, size: int, batch: int, quick: bool, runtime: str = "torch", precision: str = "auto") -> float:
    """images/s of the CNN alone on ready batches in the layout it reads, in the precision extraction picks
    (``precision``), run by ``runtime`` (an int8 CNN is calibrated on its warm-up batch)."""
    from seqvision.features.encode import encode_batch, input_layout, prepare_encoder
    from seqvision.models.backbones import build_backbone

    dtype = inference_dtype(torch.device("cpu"), precision)
    encoder = build_backbone(backbone, weights="none")
    encoder.preprocessing = dataclasses.replace(encoder.preprocessing, image_size=size)
    with tempfile.TemporaryDirectory() as root:  # the engines' ONNX files: this run's own
        net = prepare_encoder(encoder, torch.device("cpu"), dtype=dtype, runtime=runtime, root=Path(root))  # as extract does
        images = torch.rand(batch, 3, size, size).contiguous(memory_format=input_layout(net))  # the layout it reads
        encode_batch(net, images, dtype)  # warm-up
        best = 0.0
        for _ in range(1 if quick else 4):
            start = time.perf_counter()
            encode_batch(net, images, dtype)
            best = max(best, batch / (time.perf_counter() - start))
    return best


def decode_seconds(paths: list[Path], size: int) -> float:
    """CPU seconds to decode and preprocess one image (load_image + the evaluation transform, as extraction
    does), on one thread: the work that shares the cores with the CNN."""
    from seqvision.data.images import load_image
    from seqvision.data.transforms import resolve_preprocessing
    from seqvision.models.backbones import build_backbone

    prep = resolve_preprocessing(build_backbone("resnet18", weights="none").preprocessing, image_size=size)
    transform = ClipTransform(prep)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as extraction's decoding threads run
    try:
        transform([load_image(paths[0], decode_size=transform.decode_size)])  # warm-up
        start = time.process_time()
        for p in paths:
            transform([load_image(p, decode_size=transform.decode_size)])
        return (time.process_time() - start) / len(paths)
    finally:
        torch.set_num_threads(threads)


def threaded_decode_seconds(paths: list[Path], size: int, batch: int) -> float:
    """Wall seconds per image of extraction's own decoding alone: every core decoding and preprocessing
    batches at once (ThreadedBatches, as extraction runs it between CNN batches), no CNN. Two cores
    decoding at once each run slower than one alone (shared caches and memory), which the one-thread
    figure of :func:`decode_seconds` leaves out."""
    from seqvision.data.transforms import resolve_preprocessing
    from seqvision.features.encode import input_layout, prepare_encoder
    from seqvision.features.loading import ThreadedBatches
    from seqvision.models.backbones import build_backbone

    encoder = build_backbone("resnet18", weights="none")
    prep = resolve_preprocessing(encoder.preprocessing, image_size=size)
    layout = input_layout(prepare_encoder(encoder, torch.device("cpu"), dtype=inference_dtype(torch.device("cpu"))))  # as extract's
    todo = {p: str(p) for p in paths}
    threads = torch.get_num_threads()
    try:
        loader = ThreadedBatches(todo, todo, prep, batch, threads, layout)
        start = time.perf_counter()
        for _ in loader:
            pass
        return (time.perf_counter() - start) / len(paths)
    finally:
        torch.set_num_threads(threads)  # the decoding threads lower torch's default for new threads


def cosine_bf16_vs_fp32(backbone: str, data: Path, size: int) -> float:
    """Mean and min cosine similarity of bf16 vs fp32 features on one real batch."""
    from seqvision.data.images import load_image
    from seqvision.data.transforms import resolve_preprocessing
    from seqvision.features.encode import encode_batch, prepare_encoder
    from seqvision.models.backbones import build_backbone

    torch.manual_seed(0)
    encoder = build_backbone(backbone, weights="none")
    prep = resolve_preprocessing(encoder.preprocessing, image_size=size)
    paths = sorted(data.rglob("*.jpg"))[:32]
    images = ClipTransform(prep)([load_image(p) for p in paths])
    net = prepare_encoder(encoder, torch.device("cpu"))
    fp32 = encode_batch(net, images, torch.float32)
    bf16 = encode_batch(net, images, torch.bfloat16)
    return float(torch.nn.functional.cosine_similarity(fp32, bf16, dim=-1).min())


def epoch_times(backbone: str, data: Path, cache: Path, size: int) -> dict:
    """One frozen-backbone epoch (batch 8), each measured: the naive per-image recompute, the live batched
    CNN, and cached features."""
    samples = discover(data)
    spec = TargetSpec.infer(samples)
    torch.manual_seed(0)
    model = build_sequence_model(2, backbone=backbone, weights="none", freeze=True)
    from seqvision.data.transforms import resolve_preprocessing
    from seqvision.tasks import TaskLoss, task_of

    prep = resolve_preprocessing(model.encoder.preprocessing, image_size=size)
    store = FeatureStore(cache, CacheKey.for_encoder(model.encoder, prep, compute=torch.float32))
    extract_features(samples, model.encoder, prep, store, precision="32", progress=False)
    loss_fn = TaskLoss(task_of(spec))
    from seqvision.training.module import make_adamw

    optim = make_adamw([{"params": [p for p in model.parameters() if p.requires_grad], "lr": 1e-3}], weight_decay=0.01)

    def epoch(dataset, cached: bool) -> float:
        loader = torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=True, collate_fn=collate, num_workers=0)
        model.train()
        start = time.perf_counter()
        for batch in loader:
            out = model.forward_features(batch.images, batch.lengths) if cached else model(batch.images, batch.lengths)
            loss = loss_fn(out, batch.targets)
            optim.zero_grad()
            loss.backward()
            optim.step()
        return time.perf_counter() - start

    def naive_epoch() -> float:
        """The tutorial's frozen epoch, measured: every image opened with PIL, transformed and passed
        through the CNN alone (fp32, one image per forward), every epoch; then the same head step."""
        from torchvision import transforms as T

        transform = T.Compose([T.Resize(prep.resize_size), T.CenterCrop(prep.image_size), T.ToTensor(),
                               T.Normalize(list(prep.mean), list(prep.std))])
        order = torch.randperm(len(samples)).tolist()
        model.train()
        start = time.perf_counter()
        for at in range(0, len(order), 8):
            batch = [samples[i] for i in order[at : at + 8]]
            with torch.no_grad():
                features = [model.encoder(transform(Image.open(f.path).convert("RGB")).unsqueeze(0)) for s in batch for f in s.frames]
            lengths = torch.tensor([len(s.frames) for s in batch])
            targets = torch.stack([spec.encode(s, list(range(len(s.frames)))) for s in batch])
            loss = loss_fn(model.forward_features(torch.cat(features), lengths), targets)
            optim.zero_grad()
            loss.backward()
            optim.step()
        return time.perf_counter() - start

    live = SequenceDataset(samples, ClipTransform(prep), encode_target=spec.encode)
    cached = cached_dataset(samples, store, encode_target=spec.encode)
    epoch(cached, True)  # warm-up
    cached_s = min(epoch(cached, True) for _ in range(5))
    live_s = epoch(live, False)
    naive_s = naive_epoch()  # measured, not derived from the naive images/s
    return {"cached_s": cached_s, "live_batched_s": live_s, "naive_recompute_s": naive_s,
            "speedup_vs_naive": naive_s / cached_s, "speedup_vs_live_batched": live_s / cached_s}


def train_epoch_s(data: Path, cache: Path, quick: bool) -> float:
    """Median seconds per epoch of `seqvision train --freeze` on the feature cache: from one epoch's start
    to the next, so its validation and checkpoint writes count; the first epoch (warm-up) is left out."""
    import lightning as L

    from seqvision.config import DataConfig, RunConfig, TrainConfig
    from seqvision.workflows import train_and_evaluate as train

    class EpochClock(L.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.starts.append(time.perf_counter())

    clock = EpochClock()
    cfg = RunConfig(
        data=DataConfig(data=str(data), cache=str(cache), num_workers=0, image_size=64 if quick else 224),
        model=ModelConfig(backbone="resnet18", weights="none", freeze=True),
        train=TrainConfig(max_epochs=4 if quick else 12, batch_size=8, patience=0, seed=0, accelerator="cpu"),
    )
    with tempfile.TemporaryDirectory() as out:
        train(cfg, Path(out) / "run", progress=False, callbacks=[clock])
    return float(np.median(np.diff(clock.starts)[1:]))


# the runtime table's rows: (runtime, precision), each where it is installed; torch at auto only where auto is
# not fp32 already (bf16 CPUs). int8 is ONNX Runtime's alone (refused, and said, where it drifts)
VARIANTS = (("torch", "auto"), ("torch", "32"), ("onnxruntime", "32"), ("openvino", "32"), ("onnxruntime", "int8"))


def runtime_table(backbone: str, data: Path, work: Path, size: int, batch: int, quick: bool, decode: float) -> dict:
    """Each runtime and precision side by side on one backbone, in this process: the naive loop (fp32), the
    CNN alone on ready batches, and the whole extraction (``extract_features`` as ``seqvision extract``
    runs it: decoding, CNN, cache writes), steady after the first batch. ``decode``: CPU seconds of
    decoding per image (one thread), for the bound of each row: its CNN alone plus the decoding shared
    by the cores (``1 / (1 / cnn + decode / cores)``)."""
    from seqvision.errors import ConfigError
    from seqvision.features.runtimes import installed

    cpu = torch.device("cpu")
    paths = sorted(data.rglob("*.jpg"))
    table: dict = {"naive_images_per_s": naive_extract(backbone, paths[: (8 if quick else 256)], size), "rows": {}}
    for runtime, precision in VARIANTS:
        if not installed(runtime) or (precision == "auto" and inference_dtype(cpu, "auto") == torch.float32):
            continue
        if quick and precision == "int8":  # a quantization takes ~5 s: the full run measures it
            continue
        label = f"{runtime} {precision}"
        try:
            alone = cnn_only(backbone, size, batch, quick, runtime=runtime, precision=precision)
            run = seqvision_extract(backbone, data, work / f"cache-{backbone}-{runtime}-{precision}", size, batch,
                                    precision=precision, runtime=runtime)
        except ConfigError as exc:  # e.g. int8 that does not keep this CNN's features
            table["rows"][label] = {"refused": str(exc)}
            continue
        bound = 1.0 / (1.0 / alone + decode / (os.cpu_count() or 1))
        table["rows"][label] = {
            "dtype": run["dtype"], "runtime": run["runtime"], "cnn_only_images_per_s": alone,
            "images_per_s": run["images_per_s"], "steady_images_per_s": run["steady_images_per_s"],
            "bound_images_per_s": bound, "steady_fraction_of_bound": run["steady_images_per_s"] / bound,
        }
    rows = {k: r for k, r in table["rows"].items() if "refused" not in r}
    base = rows.get("torch 32")
    for r in rows.values():
        r["speedup_vs_naive"] = r["steady_images_per_s"] / table["naive_images_per_s"]
        r["speedup_vs_torch_fp32"] = r["steady_images_per_s"] / base["steady_images_per_s"] if base else float("nan")
    fastest = max(rows, key=lambda k: rows[k]["cnn_only_images_per_s"])
    table["fastest_cnn"] = fastest  # the bound on this machine: the fastest runtime's CNN plus decoding
    table["best_steady_fraction_of_fastest_bound"] = max(r["steady_images_per_s"] for r in rows.values()) / rows[fastest]["bound_images_per_s"]
    return table


def print_runtime_table(backbone: str, table: dict, decode: float) -> None:
    print(f"\n{backbone}, every runtime side by side (naive loop, fp32: {table['naive_images_per_s']:.1f} img/s; "
          f"decoding {1000 * decode:.2f} ms of CPU per image):")
    print("| runtime precision | CNN alone img/s | extraction img/s (steady) | x naive | x torch fp32 | bound img/s | % of bound |")
    print("|---|---|---|---|---|---|---|")
    for label, r in table["rows"].items():
        if "refused" in r:
            print(f"| {label} | refused: {r['refused'][:150]} | | | | | |")
            continue
        print(f"| {label} ({r['runtime']}, {r['dtype']}) | {r['cnn_only_images_per_s']:.1f} | {r['images_per_s']:.1f} "
              f"({r['steady_images_per_s']:.1f}) | {r['speedup_vs_naive']:.2f}x | {r['speedup_vs_torch_fp32']:.2f}x | "
              f"{r['bound_images_per_s']:.1f} | {100 * r['steady_fraction_of_bound']:.0f}% |")
    print(f"{backbone}: the fastest CNN alone is {table['fastest_cnn']}; the best steady extraction is "
          f"{100 * table['best_steady_fraction_of_fastest_bound']:.0f}% of its bound (target >= 90%)")


def malloc_effect(backbone: str, data: Path, size: int, batch: int) -> dict:
    """Extraction in fresh processes with and without the allocator tuning (env switch)."""
    out = {}
    for name, env in (("tuned", {}), ("default_malloc", {"SEQVISION_NO_MALLOC_TUNING": "1"})):
        with tempfile.TemporaryDirectory() as cache:
            code = (f"import sys, json; sys.argv=['x']; sys.path.insert(0, {str(ROOT / 'benchmarks')!r});"
                    "import extract_speed as b; from pathlib import Path; import seqvision.runtime as r; r.tune_allocator();"
                    f"print(json.dumps(b.seqvision_extract({backbone!r}, Path({str(data)!r}), Path({cache!r}), {size}, {batch})))")
            res = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, check=True)
            out[name] = json.loads(res.stdout.strip().splitlines()[-1])
    return {
        "tuned_images_per_s": out["tuned"]["images_per_s"],
        "default_images_per_s": out["default_malloc"]["images_per_s"],
        "tuned_faults_per_batch": out["tuned"]["page_faults_per_batch"],
        "default_faults_per_batch": out["default_malloc"]["page_faults_per_batch"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it works, not speed")
    parser.add_argument("--no-resnet50", action="store_true")
    parser.add_argument("--keras-python", help="a Python with TensorFlow: also time the Keras idiom (keras_baseline.py)")
    parser.add_argument("--no-compile", action="store_true", help="skip timing ResNet-18 extraction with --compile (quick runs skip it)")
    parser.add_argument("--runtime-backbones", nargs="*", default=["resnet18", "mobilenet_v2"],
                        help="backbones of the runtime table: every installed runtime and precision side by side "
                        "(default: %(default)s; quick: resnet18; none: no table)")
    args = parser.parse_args()
    tune_allocator()
    q = args.quick
    samples, frames, w, h, size, batch = (4, 4, 64, 48, 64, 8) if q else (64, 16, 320, 240, 224, 64)
    from seqvision.features.runtimes import cpu_signature

    report: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                "torch": torch.__version__, "threads": torch.get_num_threads(),
                                "cpu_model_and_flags": cpu_signature()}, "quick": q}
    print(f"machine: {cpu_signature()} (the flags that change the kernels), {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp) / "data", samples, frames, w, h)
        paths = sorted(data.rglob("*.jpg"))
        peak = {"fp32": conv_peak(torch.float32, q), "bf16": conv_peak(torch.bfloat16, q)}
        report["conv_peak_gflops"] = peak
        backbones = ["resnet18"] + ([] if q or args.no_resnet50 else ["resnet50"])
        for backbone in backbones:
            import torchvision

            gflop = conv_flops(torchvision.models.get_model(backbone), size) / 1e9
            naive = naive_extract(backbone, paths[: (8 if q else 256)], size)
            ours = seqvision_extract(backbone, data, Path(tmp) / f"cache-{backbone}", size, batch)
            ours32 = seqvision_extract(backbone, data, Path(tmp) / f"cache-{backbone}-fp32", size, batch, precision="32")
            alone = cnn_only(backbone, size, batch, q)
            decode = decode_seconds(paths[: (8 if q else 256)], size)
            # the bound of any pipeline on these cores: the CNN's time per image plus the decoding's, shared
            bound = 1.0 / (1.0 / alone + decode / (os.cpu_count() or 1))
            decode_wall = threaded_decode_seconds(paths[: (8 if q else 512)], size, batch)  # as extraction decodes
            bound_as_run = 1.0 / (1.0 / alone + decode_wall)
            fast = peak["bf16"] if ours["dtype"] == "bfloat16" else peak["fp32"]
            ceiling = fast / gflop
            report[backbone] = {
                "gflop_per_image": gflop,
                "naive_images_per_s": naive,
                "seqvision_images_per_s": ours["images_per_s"],
                "seqvision_dtype": ours["dtype"],
                "speedup_vs_naive": ours["images_per_s"] / naive,
                "seqvision_fp32_images_per_s": ours32["images_per_s"],
                "speedup_vs_naive_fp32": ours32["images_per_s"] / naive,  # fp32 on both sides
                "cnn_only_images_per_s": alone,
                "cnn_only_speedup_bound": alone / naive,
                "ceiling_images_per_s": ceiling,
                "fraction_of_ceiling": ours["images_per_s"] / ceiling,
                "bf16_vs_fp32_min_cosine": cosine_bf16_vs_fp32(backbone, data, size),
                "steady_images_per_s": ours["steady_images_per_s"],
                "decode_ms_per_image": 1000 * decode,
                "bound_images_per_s": bound,
                "steady_fraction_of_bound": ours["steady_images_per_s"] / bound,
                "decode_all_cores_wall_ms_per_image": 1000 * decode_wall,
                "bound_as_run_images_per_s": bound_as_run,
                "steady_fraction_of_bound_as_run": ours["steady_images_per_s"] / bound_as_run,
            }
        if not q and not args.no_compile:
            compiled = seqvision_extract("resnet18", data, Path(tmp) / "cache-compiled", size, batch, compile=True)
            report["resnet18"]["compiled_images_per_s"] = compiled["images_per_s"]
            report["resnet18"]["compiled_steady_images_per_s"] = compiled["steady_images_per_s"]
            report["resnet18"]["compiled_steady_fraction_of_ceiling"] = compiled["steady_images_per_s"] / report["resnet18"]["ceiling_images_per_s"]
        runtime_backbones = (["resnet18"] if args.runtime_backbones else []) if q else args.runtime_backbones
        report["runtimes"] = {b: runtime_table(b, data, Path(tmp), size, batch, q, report[backbones[0]]["decode_ms_per_image"] / 1000)
                              for b in runtime_backbones}
        report["epoch"] = epoch_times("resnet18", data, Path(tmp) / "cache-epoch", size)
        e = report["epoch"]
        # not the same work as the epochs above: train() trains on its train split and then validates
        e["train_command_epoch_s"] = train_epoch_s(data, Path(tmp) / "cache-train", q)
        report["malloc"] = malloc_effect(backbones[-1], data, size, batch)
        report["malloc"]["backbone"] = backbones[-1]

    if args.keras_python:
        res = subprocess.run([args.keras_python, str(ROOT / "benchmarks" / "keras_baseline.py")] + (["--quick"] if q else []),
                             capture_output=True, text=True, check=True)
        keras = json.loads(res.stdout.strip().splitlines()[-1])
        report["keras_resnet50"] = keras
        if "resnet50" in report:
            report["resnet50"]["speedup_vs_keras"] = report["resnet50"]["seqvision_images_per_s"] / keras["keras_images_per_s"]
            report["resnet50"]["speedup_vs_keras_fp32"] = report["resnet50"]["seqvision_fp32_images_per_s"] / keras["keras_images_per_s"]

    print(f"conv peak: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s")
    for backbone in backbones:
        r = report[backbone]
        print(f"{backbone}: naive {r['naive_images_per_s']:.1f} img/s | seqvision {r['seqvision_images_per_s']:.1f} img/s "
              f"({r['seqvision_dtype']}) = {r['speedup_vs_naive']:.2f}x | ceiling {r['ceiling_images_per_s']:.0f} img/s "
              f"-> {100 * r['fraction_of_ceiling']:.0f}% | bf16/fp32 cosine >= {r['bf16_vs_fp32_min_cosine']:.4f} (random weights)")
        print(f"{backbone}: fp32 on both sides: naive {r['naive_images_per_s']:.1f} img/s | seqvision --precision 32 "
              f"{r['seqvision_fp32_images_per_s']:.1f} img/s = {r['speedup_vs_naive_fp32']:.2f}x")
        print(f"{backbone}: the CNN alone on ready batches {r['cnn_only_images_per_s']:.1f} img/s -> no pipeline with this "
              f"CNN beats {r['cnn_only_speedup_bound']:.2f}x the naive loop here; seqvision reaches "
              f"{100 * r['seqvision_images_per_s'] / r['cnn_only_images_per_s']:.0f}% of it")
    r = report["resnet18"]
    print(f"resnet18 steady state (after the first batch): {r['steady_images_per_s']:.1f} img/s")
    print(f"resnet18 bound with decoding on these cores: CNN alone {r['cnn_only_images_per_s']:.1f} img/s + decoding "
          f"{r['decode_ms_per_image']:.2f} ms of CPU per image over {os.cpu_count()} cores = {r['bound_images_per_s']:.1f} img/s; "
          f"steady extraction is {100 * r['steady_fraction_of_bound']:.0f}% of it (target >= 90%)")
    print(f"resnet18 bound with decoding as extraction runs it (every core decoding at once, no CNN: "
          f"{r['decode_all_cores_wall_ms_per_image']:.2f} ms of wall time per image): {r['bound_as_run_images_per_s']:.1f} img/s; "
          f"steady extraction is {100 * r['steady_fraction_of_bound_as_run']:.0f}% of it")
    if "compiled_images_per_s" in r:
        print(f"resnet18 with --compile: {r['compiled_images_per_s']:.1f} img/s with the compilation, "
              f"{r['compiled_steady_images_per_s']:.1f} img/s steady ({100 * r['compiled_steady_fraction_of_ceiling']:.0f}% of the ceiling)")
    if "keras_resnet50" in report:
        k = report["keras_resnet50"]["keras_images_per_s"]
        ratio = report.get("resnet50", {}).get("speedup_vs_keras")
        ratio32 = report.get("resnet50", {}).get("speedup_vs_keras_fp32")
        print(f"keras TimeDistributed(ResNet50)+LSTM, fp32, tf.function: {k:.1f} img/s"
              + (f" -> seqvision {ratio:.2f}x (bf16), {ratio32:.2f}x (fp32, like Keras)" if ratio else ""))
    for backbone, table in report["runtimes"].items():
        print_runtime_table(backbone, table, r["decode_ms_per_image"] / 1000)
    e = report["epoch"]
    print(f"frozen epoch: cached {1000 * e['cached_s']:.1f} ms | live batched {e['live_batched_s']:.2f} s | naive recompute "
          f"{e['naive_recompute_s']:.2f} s -> {e['speedup_vs_naive']:.0f}x vs naive, {e['speedup_vs_live_batched']:.0f}x vs live batched")
    print(f"`seqvision train --freeze` epoch on the cache (its train split, validation, last.ckpt): {1000 * e['train_command_epoch_s']:.0f} ms")
    m = report["malloc"]
    print(f"malloc ({m['backbone']}): tuned {m['tuned_images_per_s']:.1f} img/s, {m['tuned_faults_per_batch']:.0f} faults/batch | "
          f"default {m['default_images_per_s']:.1f} img/s, {m['default_faults_per_batch']:.0f} faults/batch")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
