"""Panning across real photos: motion direction (and signed speed) is the whole label.

A sample is 8 frames of a 96x96 window sliding across one real photograph (the photos of Debian's
``opencv-doc``: scenes, faces, fruit, buildings, stereo pairs, text), left, right, up or down, at 1, 2, 4
or 8 pixels per frame (of the photo scaled to a 224-px shorter side). Every frame is a plain crop of the
photo, so each frame alone, and the set of frames, is equally likely under the opposite direction: only
how the texture moves between neighbouring frames tells the label. Two tasks on the same samples:

* **direction**: 4 classes (chance 0.25);
* **signed speed**: regression, pixels per frame, + for right/down and - for left/up (range -8..8;
  predicting 0 gives an MAE of 3.75, the mean speed; the target is an MAE <= 15 % of the range, 2.4).

Splits are grouped by source photo: the photos of a test sample are never seen in training, and
near-duplicates (a stereo pair, an image and its edited copy, a numbered series) share one group.
Rows: the frozen pooled-feature heads (which the issue expects to fail: one globally pooled vector per
frame keeps what is in view, not where it moved) and, with ``--finetune``, the last stages fine-tuned on
cached maps, with and without ``--temporal-shift``.

    python benchmarks/accuracy/panning_photos.py [--quick] [--finetune]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PHOTOS = Path("/usr/share/doc/opencv-doc/examples/data")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SPEEDS = (1, 2, 4, 8)
FRAMES, WINDOW, SHORT_SIDE = 8, 96, 224
IMAGE_SIZE = 96  # the window's own size: scaling it up adds no detail, only compute
# synthetic drawings with large flat areas: a window on them is often one colour, whatever the motion
SYNTHETIC = {"gradient", "opencv-logo", "linuxlogo", "windowslogo", "detect_blob", "ellipses", "chessboard"}
ROWS = ("mean pooling", "lstm (default)", "transformer", "lstm + temporal diff")
QUICK_ROWS = ("mean pooling", "lstm (default)")
# the motion recipe: MobileNetV2 cut after features[6] (stride 8, 32 channels: a pan of 1-8 px is 1/8 to 1
# cell there, where at stride 32 it is sub-pixel), its last 4 kept stages (features[3..6]) fine-tuned on the
# cached maps of features[0..2]; mean over the frames (each frame's features hold the motion already)
def family(name: str) -> str:
    """The group of a photo: near-duplicates (left03/right07, aloeL/aloeR, leuvenA/B, pic1..pic6, ...) share one."""
    stem = Path(name).stem.lower()
    base = re.sub(r"\d+$", "", stem)
    if base in ("left", "right"):
        return "stereo-chessboards" if base != stem else "stereo-pair"
    for prefix in ("aloe", "leuven", "imagetext", "ela_", "text_", "blender_suzanne", "basketball", "rubberwhale", "graf", "aero", "pic"):
        if stem.startswith(prefix):
            return prefix.rstrip("_")
    return base


def photos(folder: Path = PHOTOS) -> list[Path]:
    """The real photographs of ``folder`` (at least 200 px each way; synthetic drawings left out)."""
    from PIL import Image

    found = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png") or family(path.name) in SYNTHETIC:
            continue
        with Image.open(path) as im:
            if min(im.size) >= 200:
                found.append(path)
    return found


def window_path(direction: str, speed: int, size: tuple[int, int], rng: np.random.Generator) -> list[tuple[int, int]]:
    """Top-left corners of the window in each frame: a straight run inside the photo."""
    dx, dy = DIRECTIONS[direction]
    travel = speed * (FRAMES - 1)
    width, height = size
    span_x = width - WINDOW - (travel if dx else 0)
    span_y = height - WINDOW - (travel if dy else 0)
    x0 = int(rng.integers(0, span_x + 1)) + (travel if dx < 0 else 0)
    y0 = int(rng.integers(0, span_y + 1)) + (travel if dy < 0 else 0)
    return [(x0 + dx * speed * t, y0 + dy * speed * t) for t in range(FRAMES)]


def split_families(families: list[str], rng: np.random.Generator) -> dict[str, str]:
    """About 25 % of the families for test, 15 % for validation, the rest for training."""
    order = sorted(families)
    rng.shuffle(order)
    n_test, n_val = max(1, round(0.25 * len(order))), max(1, round(0.15 * len(order)))
    return {f: "test" if i < n_test else "val" if i < n_test + n_val else "train" for i, f in enumerate(order)}


def make_dataset(root: Path, *, per_photo: int, max_photos: int | None = None, seed: int = 0) -> tuple[Path, dict]:
    """Frames as JPEG (quality 95) under ``root/frames/<sample>/`` and ``root/manifest.csv``
    (``sample_id,label,speed,path,index,split,group``); returns the manifest and counts."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    chosen = photos()[:max_photos]
    splits = split_families(sorted({family(p.name) for p in chosen}), rng)
    rows = ["sample_id,label,speed,path,index,split,group"]
    counts: dict[str, int] = {}
    for path in chosen:
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = SHORT_SIDE / min(im.size)
            photo = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
        group = family(path.name)
        split = splits[group]
        for direction in DIRECTIONS:
            for speed in SPEEDS:
                for n in range(per_photo):
                    sample = f"{path.stem}-{direction}-{speed}-{n}"
                    folder = root / "frames" / sample
                    folder.mkdir(parents=True)
                    signed = speed if direction in ("right", "down") else -speed
                    for t, (x, y) in enumerate(window_path(direction, speed, photo.size, rng)):
                        photo.crop((x, y, x + WINDOW, y + WINDOW)).save(folder / f"f{t}.jpg", quality=95)
                        rows.append(f"{sample},{direction},{signed},frames/{sample}/f{t}.jpg,{t},{split},{group}")
                    counts[split] = counts.get(split, 0) + 1
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest, {"photos": len(chosen), "groups": len(splits), "samples": counts,
                      "test_groups": sorted(g for g, s in splits.items() if s == "test")}


def models_run(rows: tuple[str, ...], finetune: bool, shifts: list[str] | None) -> str:
    """What the table's rows run, for its title (the frozen MobileNetV2 only when a frozen row runs)."""
    parts = ["frozen ImageNet MobileNetV2"] if rows else []
    if finetune:
        parts.append("MobileNetV2's last stages fine-tuned on cached maps")
    if shifts:
        parts.append(f"the motion recipe (MobileNetV2 cut at stride 8, 4 stages fine-tuned; shift {', '.join(shifts)})")
    return " and ".join(parts) or "no rows"


def as_regression(cfg) -> None:
    cfg.data.task, cfg.data.targets = "regression", ["speed"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few photos, 1 seed, 2 epochs, 2 frozen rows unless --rows (for the tests)")
    parser.add_argument("--per-photo", type=int, default=1, help="samples per photo, direction and speed (full mode)")
    parser.add_argument("--finetune", action="store_true", help="also the rows fine-tuned on cached maps (slow)")
    parser.add_argument("--finetune-stages", type=int, default=8, help="--trainable-stages of the fine-tuned rows")
    parser.add_argument("--motion", nargs="*", choices=("off", "bidirectional", "causal"), default=None,
                        help="add the motion-recipe rows (common.motion_recipe()) with these temporal shifts")
    parser.add_argument("--motion-epochs", type=int, default=6, help="max epochs of the motion rows")
    parser.add_argument("--rows", nargs="*", choices=ROWS, default=None, help="the frozen rows to run (default: all)")
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE, help="the CNN's input size (default: the window's)")
    parser.add_argument("--tasks", nargs="+", choices=("direction", "speed"), default=["direction", "speed"])
    args = parser.parse_args()
    start = time.perf_counter()
    image_size = args.image_size
    common.quiet()
    if not PHOTOS.is_dir():
        sys.exit(f"no photos in {PHOTOS} (Debian package opencv-doc)")
    if args.quick:
        per_photo, max_photos, seeds, epochs, rows = 1, 8, common.QUICK_SEEDS, 2, QUICK_ROWS
    else:
        per_photo, max_photos, seeds, epochs, rows = args.per_photo, None, common.SEEDS, 20, ROWS
    rows = tuple(args.rows) if args.rows is not None else rows  # --rows chooses with --quick too
    finetune = common.finetune_rows(args.finetune_stages) if args.finetune else {}
    # the motion rows have their own max_epochs: each epoch runs the CNN's last stages (the curves show where they stand)
    motion = common.motion_rows(tuple(args.motion), args.motion_epochs) if args.motion else {}
    finetune.update(motion)
    title = f"Panning across real photos: direction (4 classes) and signed speed, {models_run(rows, args.finetune, args.motion)}"
    with tempfile.TemporaryDirectory(prefix="seqvision-pan-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        manifest, counts = make_dataset(tmp / "data", per_photo=per_photo, max_photos=max_photos)
        print(common.header(
            title, seeds=seeds, image_size=args.image_size, extra=[
                f"data: {FRAMES} frames of a {WINDOW}x{WINDOW} window panning across {counts['photos']} photos of opencv-doc "
                f"({counts['groups']} groups of near-duplicates) scaled to a {SHORT_SIDE}-px shorter side; speeds "
                f"{', '.join(map(str, SPEEDS))} px/frame x 4 directions x {per_photo} per photo; samples per split "
                f"{counts['samples']}; grouped by source photo (test groups: {', '.join(counts['test_groups'])}); "
                f"written in {time.perf_counter() - t0:.0f} s",
                f"recipe: seqvision defaults (head lstm with LayerNorm + projection input and first+last readout, hidden "
                f"256, lr 1e-3, batch 8, max_epochs {epochs}, patience 5); hflip off; chance: direction 0.25, speed MAE "
                f"3.75 (predicting 0); targets: direction >= 0.95, speed MAE <= 2.4 (15 % of the range -8..8)",
                *([f"motion rows: {common.motion_recipe()} (the rest as above), no augmentation, max_epochs {args.motion_epochs}, "
                   f"patience 5"] if motion else []),
            ]), flush=True)
        cache = tmp / "cache"
        results = {}
        if "direction" in args.tasks:
            results["direction"] = common.run_rows(manifest, cache, tmp / "runs", rows=rows, seeds=seeds, image_size=image_size,
                                                   epochs=epochs, label="direction", extra_rows=finetune, show_curves=True)
        if "speed" in args.tasks:
            results["speed"] = common.run_rows(manifest, cache, tmp / "runs", rows=rows, seeds=seeds, image_size=image_size,
                                               epochs=epochs, label="speed", metric="mae", adjust=as_regression,
                                               extra_rows=finetune, show_curves=True)
    summary: dict = {}
    table = []
    for name in [*rows, *finetune]:
        cells, every = [name], []
        for task in ("direction", "speed"):
            runs = results.get(task, {}).get(name)
            if not runs:
                cells.append("not run")
                continue
            spread = common.spread([r["accuracy"] for r in runs])
            summary.setdefault(name, {})[task] = spread
            cells.append(common.fmt(spread))
            every += runs
        cells.append(f"{common.spread([r['epochs'] for r in every])['mean']:.1f}")
        cells.append(f"{common.spread([r['seconds'] for r in every])['mean']:.0f}")
        table.append(cells)
    print()
    print(common.markdown_table(["MobileNetV2 (frozen unless said) +", "direction accuracy (4)", "signed speed MAE (px/frame)", "epochs",
                                 "s / run"], table))
    print(f"\nmean over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}), in brackets min-max over seeds; "
          f"test samples: {counts['samples'].get('test', 0)}, from photos never seen in training.")
    first = next(iter(results.values()))
    if common.cache_note(first):
        print(common.cache_note(first))
    print(f"total time {common.elapsed(start)}")
    print(json.dumps({"benchmark": "panning_photos", "title": title, "quick": args.quick, "seeds": list(seeds), "epochs": epochs,
                      "counts": counts, "image_size": args.image_size, "feature_precision": common.feature_precision(),
                      "results": summary, "runs": results, "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
