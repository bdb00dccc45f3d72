"""What the order diagnostics say on an ETH-80-like multi-view set: objects seen in several views.

Each real photo of Debian's ``opencv-doc`` (baboon, fruits, building, ...) is an object; a sample is a set
of 3 views of it (random crops, resized to 64 px); the label is a property of the object that every view
shows: ``warm`` when its photo is redder than it is blue on average, else ``cool``. Image order means
nothing here. Samples of one object form a group, so no object is in two splits. A frozen ImageNet
MobileNetV2 (``../shared/weights/``) with the default LSTM head trains on cached features; the script
prints what ``seqvision train`` and ``seqvision report`` print: the metrics, per-object figures and the
diagnostics' findings.

    python benchmarks/diagnostics_example.py [--quick]
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenet_v2-imagenet.pth"
PHOTOS = Path("/usr/share/doc/opencv-doc/examples/data")
sys.path.insert(0, str(ROOT / "src"))


def make_views(out: Path, *, objects: int, sets: int, views: int = 3, seed: int = 0) -> Path:
    """``out/m.csv``: one row per sample (``paths`` of its views), ``label`` and ``object`` (the group)."""
    import numpy as np
    from PIL import Image

    rng = random.Random(seed)
    photos = sorted(p for p in PHOTOS.glob("*.jpg"))[:objects]
    if len(photos) < 4:
        raise SystemExit(f"too few photos in {PHOTOS}: apt-get install opencv-doc")
    rows = []
    for photo in photos:
        image = Image.open(photo).convert("RGB")
        w, h = image.size
        red, _, blue = np.asarray(image, dtype=np.float64).mean(axis=(0, 1))
        label = "warm" if red > blue else "cool"
        for s in range(sets):
            paths = []
            for v in range(views):
                box = (rng.randint(0, w // 4), rng.randint(0, h // 4), w - rng.randint(0, w // 4), h - rng.randint(0, h // 4))
                path = out / "views" / f"{photo.stem}_{s}_{v}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                image.crop(box).resize((64, 64)).save(path)
                paths.append(path.relative_to(out).as_posix())
            rows.append({"sample_id": f"{photo.stem}_{s}", "label": label,
                         "paths": ";".join(paths), "object": photo.stem})
    with open(out / "m.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out / "m.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    from seqvision.cli import main as seqvision

    objects, sets, epochs = (8, 3, 2) if args.quick else (20, 6, 20)
    weights = str(WEIGHTS) if WEIGHTS.exists() else "none"
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_views(Path(tmp), objects=objects, sets=sets)
        common = ["--backbone", "mobilenet_v2", "--weights", weights, "--mean", "0.5", "0.5", "0.5", "--std", "0.5", "0.5", "0.5"]
        print(f"$ seqvision train --data m.csv --group-by object --freeze --image-size 64 --max-epochs {epochs} "
              f"({objects} objects x {sets} sets of 3 views, weights {Path(weights).name})", flush=True)
        code = seqvision(["train", "--data", str(manifest), "--out", f"{tmp}/run", *common, "--freeze", "--image-size", "64",
                          "--max-epochs", str(epochs), "--group-by", "object", "--cache", f"{tmp}/cache", "--num-workers", "0",
                          "--no-progress"])
        if code:
            raise SystemExit(code)
        print("$ seqvision report run   # the test split: objects training never saw", flush=True)
        raise SystemExit(seqvision(["report", f"{tmp}/run"]))


if __name__ == "__main__":
    main()
