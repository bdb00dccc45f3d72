"""Where motion and layout cues help: temporal-difference inputs and grid2 pooling vs plain global pooling.

Two synthetic tasks, every frame and frame set equally likely under both classes (order is the label):
  direction  a square moving left or right: WHERE it is changes, and global average pooling of a
             translation-equivariant CNN all but erases where; grid2 (2x2 cells) keeps coarse layout.
  approach   a shape growing or shrinking (the demo's data): WHAT is there changes, which a globally
             pooled vector keeps; the cues should not be needed.
The backbone is FROZEN ImageNet MobileNetV2 (``../shared/weights/mobilenet_v2-imagenet.pth``; random
init when the file is absent, said in the output) on cached features, as with a real frozen backbone:
only the LSTM head learns, so the features decide what it can see. (A small CNN trained end to end
learns position from its padding and solves both tasks whatever the pooling: measured 1.000 everywhere.)

    python benchmarks/motion_cues.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenet_v2-imagenet.pth"
sys.path.insert(0, str(ROOT / "src"))

from seqvision.demo import demo_config, make_demo_dataset  # noqa: E402
from seqvision.workflows import train_and_evaluate as train  # noqa: E402

CONFIGS = {"avg": ("avg", False), "avg + temporal diff": ("avg", True), "grid2": ("grid2", False), "grid2 + temporal diff": ("grid2", True)}


def make_direction_dataset(root: Path, *, per_class: int, size: int = 32, seed: int = 0) -> Path:
    """``root/<left|right>/<sample>/f<i>.png``: a square crossing part of the image, 6-10 frames."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    for label in ("left", "right"):
        for n in range(per_class):
            folder = root / label / f"{label}{n:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            frames, step, side = rng.randint(6, 10), rng.uniform(1.5, 2.5), rng.randint(4, 7)
            first = rng.uniform(0, size - side - step * (frames - 1))  # leftmost position of the run
            xs = [first + step * t for t in range(frames)]
            if label == "left":
                xs.reverse()
            y = rng.uniform(0, size - side)
            colour = tuple(rng.randint(140, 255) for _ in range(3))
            for t, x in enumerate(xs):
                img = Image.frombytes("RGB", (size, size), bytes(rng.randint(0, 70) for _ in range(size * size * 3)))
                ImageDraw.Draw(img).rectangle([x, y, x + side, y + side], fill=colour)
                img.save(folder / f"f{t}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per configuration (each also draws its own split)")
    args = parser.parse_args()
    per_class, epochs = (12, 2) if args.quick else (250, 30)
    seeds = list(range(1 if args.quick else args.seeds))
    weights = str(WEIGHTS) if WEIGHTS.exists() else "none"
    print(f"backbone: frozen mobilenet_v2, weights {weights}; seeds {seeds}; features bf16 where the CPU is fast at it", flush=True)
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tasks = {
            "direction": make_direction_dataset(Path(tmp) / "direction", per_class=per_class),
            "approach": make_demo_dataset(Path(tmp) / "approach", per_class=per_class),
        }
        for task, data in tasks.items():
            for (name, (pool, diff)), seed in ((c, seed) for c in CONFIGS.items() for seed in seeds):
                cfg = demo_config(data, max_epochs=epochs, workers=0)
                cfg.train.seed = seed
                cfg.model.backbone, cfg.model.weights, cfg.model.freeze = "mobilenet_v2", weights, True
                cfg.data.image_size = cfg.data.resize_size = 96
                cfg.data.mean = cfg.data.std = [0.5, 0.5, 0.5]  # what these weights expect
                cfg.data.cache = str(Path(tmp) / "cache")
                cfg.train.lr, cfg.train.patience = 2e-3, 0
                cfg.data.val_fraction, cfg.data.test_fraction = 0.2, 0.3  # 150 test samples per task
                cfg.model.pool, cfg.model.temporal_diff = pool, diff
                if args.quick:  # no shuffled/mirrored re-runs of the splits: nothing here reads them (a smoke run)
                    cfg.train.diagnostics = "off"
                start = time.perf_counter()
                run = train(cfg, Path(tmp) / "runs" / task / f"{name.replace(' ', '_').replace('+', '')}-{seed}", progress=False)
                acc = run.test_metrics["accuracy"]
                entry = results.setdefault(task, {}).setdefault(name, {"test_accuracy": [], "seconds": 0.0})
                entry["test_accuracy"].append(acc)
                entry["seconds"] += time.perf_counter() - start
                print(f"{task:10s} {name:22s} seed {seed} test accuracy {acc:.3f}  ({time.perf_counter() - start:.0f} s)", flush=True)
    print("\n| test accuracy, mean (min-max) of seeds | " + " | ".join(CONFIGS) + " |")
    print("|---|" + "---|" * len(CONFIGS))
    for task, by_config in results.items():
        cells = [f"{sum(a) / len(a):.3f} ({min(a):.3f}-{max(a):.3f})" for a in (by_config[c]["test_accuracy"] for c in CONFIGS)]
        print(f"| {task} | " + " | ".join(cells) + " |")
    print(json.dumps({"quick": args.quick, "per_class": per_class, "epochs": epochs, "weights": weights, "seeds": seeds, "results": results}))


if __name__ == "__main__":
    main()
