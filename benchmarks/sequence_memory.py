"""Peak memory and step time of end-to-end training (fine-tuned ResNet-18 + LSTM) versus sequence length,
with and without chunked backbone passes + activation checkpointing.

    python benchmarks/sequence_memory.py            # 8, 16, 32, 64 frames at 224x224, CPU (or CUDA if present)
    python benchmarks/sequence_memory.py --quick    # small and fast: checks that it works

Each configuration runs in a fresh process (peak RSS is a per-process high-water mark; on CUDA the
peak allocated memory is read instead). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_config(frames: int, chunked: bool, size: int, steps: int, device: str, backbone: str) -> dict:
    """Train ``steps`` steps on one sample of ``frames`` frames; return peak memory and step time."""
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from seqvision.config import ModelConfig
    from seqvision.runtime import tune_allocator
    from seqvision.training.module import make_adamw

    tune_allocator()
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone, weights="none", chunk_size=8 if chunked else None, checkpointing=chunked)
    model = cfg.build_model(2).to(device).train()
    optim = make_adamw([{"params": list(model.parameters()), "lr": 1e-4}], weight_decay=0.0)
    images = torch.randn(frames, 3, size, size, device=device)
    lengths = torch.tensor([frames])
    target = torch.tensor([1], device=device)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(images, lengths), target)
        optim.zero_grad()
        loss.backward()
        optim.step()

    baseline_mb = _current_rss_mb()  # the process with model and data, before any activation exists
    step()  # warm-up: allocates optimizer state too
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if device == "cuda":
        baseline_mb = 0.0  # max_memory_allocated counts tensors only
    return {"frames": frames, "chunked": chunked, "peak_mb": peak_mb, "baseline_mb": baseline_mb,
            "training_mb": peak_mb - baseline_mb, "step_s": (time.perf_counter() - start) / steps}


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--config", help=argparse.SUPPRESS)  # internal: run one configuration
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    size, frame_counts, steps, backbone = (64, [8, 16], 1, "resnet18") if args.quick else (224, [8, 16, 32, 64], 2, "resnet18")
    if args.config:
        frames, chunked = args.config.split(",")
        print(json.dumps(one_config(int(frames), chunked == "1", size, steps, device, backbone)))
        return
    rows = []
    for frames in frame_counts:
        for chunked in (False, True):
            cmd = [sys.executable, __file__, "--config", f"{frames},{int(chunked)}", "--device", device] + (["--quick"] if args.quick else [])
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{frames:3d} frames  {'chunk 8 + checkpointing' if chunked else 'plain                  '}  "
                  f"peak {r['peak_mb']:8.0f} MB (training {r['training_mb']:7.0f} MB over the loaded model)  "
                  f"step {r['step_s']:6.2f} s", flush=True)

    def pick(frames: int, chunked: bool, key: str) -> float:
        return next(r[key] for r in rows if r["frames"] == frames and r["chunked"] == chunked)

    lo, hi = frame_counts[1], frame_counts[-1]
    summary = {"device": device, "image_size": size, "backbone": backbone, "rows": rows}
    for key in ("peak_mb", "training_mb"):
        for chunked, name in ((True, "checkpointed"), (False, "plain")):
            summary[f"{key}_growth_{lo}_to_{hi}_{name}"] = pick(hi, chunked, key) / max(pick(lo, chunked, key), 1e-9)
    print(f"growth {lo} -> {hi} frames: peak memory checkpointed {summary[f'peak_mb_growth_{lo}_to_{hi}_checkpointed']:.2f}x, "
          f"plain {summary[f'peak_mb_growth_{lo}_to_{hi}_plain']:.2f}x; training memory checkpointed "
          f"{summary[f'training_mb_growth_{lo}_to_{hi}_checkpointed']:.2f}x, plain {summary[f'training_mb_growth_{lo}_to_{hi}_plain']:.2f}x")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
