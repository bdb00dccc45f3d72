"""Multi-view majority: which garment do most of the photos of a set show? An order-free task.

A sample is a set of 2-8 real Fashion-MNIST photos (28x28, shown dark on white as the original catalogue
photos); its label is the class a strict majority of them shows (all 10 classes: chance 0.1). A set of n
holds k photos of its class, k drawn uniformly from n//2+1 .. n, and n-k photos of other classes (never
as many as k of one class, since n-k < k), in random order. Image order means nothing here, which is
what the order-free heads (``mean``, ``max``) are for; the question is whether they beat the LSTM, and
how much looking at every photo beats looking at one. Train and validation sets draw from a pool of
photos of the official training split, test sets from a pool of the official test split; a photo can
appear in several sets of its split (its features are computed once: one cache for every run).

Images: the 28 px photo upscaled to 96 px (whole: resize_size = image_size, no crop), a 3x3 final map in
MobileNetV2; 128 px would cost the cache twice the compute for the few points it adds to single-photo
recognition (see moving_fashion_mnist.py). The backbone is a FROZEN ImageNet MobileNetV2
(``../shared/weights/mobilenet_v2-imagenet.pth``); only the heads learn, with seqvision's defaults
(max_epochs 20, patience 5). The fine-tuned rows (full mode; ``--finetune-epochs 0`` skips them) train
MobileNetV2's last ``--finetune-stages`` stages on the cached maps of the frozen ones (computed once), with
the head of ``--finetune-head``, without and with a temporal shift (which order-free sets do not need:
those rows show what it costs), 3 seeds like every row. ``--augmented-epochs N`` adds a row that fine-tunes the
same stages LIVE (the CNN runs every epoch, no cached maps) on augmented photos (seqvision's random resized
crop and colour jitter, plus horizontal flips, which no garment's class depends on; one draw per set), N epochs
at most: the cached rows fit their 2,000 training photos to a loss of ~0 within 8-16 epochs, and augmentation
is what cached maps cannot give.

    python benchmarks/accuracy/multiview_majority.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import FASHION_CLASSES, ROWS  # noqa: E402

IMAGE_SIZE = 96
MIN_VIEWS, MAX_VIEWS = 2, 8
FINETUNE_STAGES = 8  # features[11..18], from stride 16 on


def write_pool(images: np.ndarray, labels: np.ndarray, per_class: int, folder: Path, rng: np.random.Generator) -> dict[int, list[str]]:
    """``per_class`` photos of each class as PNG (dark on white); ``{class: [relative paths]}``."""
    from PIL import Image

    folder.mkdir(parents=True)
    pool: dict[int, list[str]] = {}
    for c, indices in common.pick_per_class(labels, list(range(len(FASHION_CLASSES))), per_class, rng).items():
        for i in indices:
            path = folder / f"{FASHION_CLASSES[c]}-{i:05d}.png"
            Image.fromarray(255 - images[i], mode="L").save(path)
            pool.setdefault(c, []).append(f"{folder.name}/{path.name}")
    return pool


def make_dataset(root: Path, *, sets_per_class: dict[str, int], pool_per_class: dict[str, int], seed: int = 0) -> Path:
    """Photo pools under ``root/<pool>/``, and the manifest ``sample_id,label,path,index,split``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = ["sample_id,label,path,index,split"]
    classes = list(range(len(FASHION_CLASSES)))
    for source, splits in (("train", ("train", "val")), ("test", ("test",))):
        images, labels = common.load_fashion(source)
        pool = write_pool(images, labels, pool_per_class[source], root / f"{source}_photos", rng)
        for split in splits:
            for c in classes:
                for n_set in range(sets_per_class[split]):
                    n = int(rng.integers(MIN_VIEWS, MAX_VIEWS + 1))
                    k = int(rng.integers(n // 2 + 1, n + 1))
                    others = [int(o) for o in rng.choice([o for o in classes if o != c], size=n - k)]
                    members = [c] * k + others
                    rng.shuffle(members)
                    sample = f"{split}-{FASHION_CLASSES[c]}-{n_set:04d}"
                    # distinct photos within a set, drawn per class from the split's pool
                    chosen: dict[int, list[str]] = {m: list(rng.choice(pool[m], size=members.count(m), replace=False))
                                                    for m in set(members)}
                    for t, m in enumerate(members):
                        rows.append(f"{sample},{FASHION_CLASSES[c]},{chosen[m].pop()},{t},{split}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny data, 1 seed, 2 epochs, 2 rows (for the tests)")
    parser.add_argument("--rows", nargs="*", choices=ROWS, default=None, help="the frozen rows to run (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default: 0 1 2; --quick: 0)")
    parser.add_argument("--finetune-stages", type=int, default=FINETUNE_STAGES,
                        help="--trainable-stages of the fine-tuned rows (MobileNetV2's last N of its 19 stages)")
    parser.add_argument("--finetune-epochs", type=int, default=None,
                        help="max_epochs of the rows fine-tuned on cached maps; 0 skips them (default: full 20, quick 0)")
    parser.add_argument("--finetune-head", choices=("lstm", "mean"), default="lstm", help="the head of the fine-tuned rows")
    parser.add_argument("--augmented-epochs", type=int, default=0,
                        help="max_epochs of a row fine-tuning the same stages live on augmented photos (default 0: not run)")
    args = parser.parse_args()
    start = time.perf_counter()
    common.quiet()
    common.require_fashion()
    if args.quick:
        sets, pools, seeds, epochs, rows = {"train": 4, "val": 1, "test": 2}, {"train": 20, "test": 10}, common.QUICK_SEEDS, 2, ("mean pooling", "lstm (default)")
    else:
        sets, pools, seeds, epochs, rows = {"train": 50, "val": 10, "test": 60}, {"train": 200, "test": 100}, common.SEEDS, 20, tuple(ROWS)
    rows = tuple(args.rows) if args.rows is not None else rows
    seeds = tuple(args.seeds) if args.seeds else seeds
    finetune_epochs = args.finetune_epochs if args.finetune_epochs is not None else (0 if args.quick else 20)
    finetune = common.finetune_rows(args.finetune_stages, finetune_epochs, head=args.finetune_head) if finetune_epochs > 0 else {}
    finetune = {f"{name} ({args.finetune_head} head)": apply for name, apply in finetune.items()}
    augmented = f"last {args.finetune_stages} stages fine-tuned live, augmented (crop, colour, flip) ({args.finetune_head} head)"
    if args.augmented_epochs > 0:
        def live_augmented(cfg) -> None:
            cfg.model.freeze, cfg.model.trainable_stages, cfg.model.head = False, args.finetune_stages, args.finetune_head
            cfg.data.augment, cfg.data.hflip, cfg.train.max_epochs = True, True, args.augmented_epochs

        finetune[augmented] = live_augmented
    k = len(FASHION_CLASSES)
    print(common.header(
        "Multi-view majority: the class most photos of a set show (10 classes, sets of 2-8), frozen ImageNet MobileNetV2",
        seeds=seeds, image_size=IMAGE_SIZE, extra=[
            f"data: sets of {MIN_VIEWS}-{MAX_VIEWS} Fashion-MNIST photos in random order, a strict majority of one class; "
            f"per class {sets['train']} train + {sets['val']} val sets from {pools['train'] * k} photos of the official train "
            f"split, {sets['test']} test sets from {pools['test'] * k} photos of the official test split: "
            f"{k * sets['train']} / {k * sets['val']} / {k * sets['test']} sets",
            f"recipe: seqvision defaults (head lstm with LayerNorm + projection input and first+last readout, hidden 256, lr 1e-3, batch 8, max_epochs {epochs}, patience 5, early "
            "stopping and best.ckpt on val_loss), hflip off; chance 0.1",
            *([f"fine-tuned rows: the last {args.finetune_stages} of MobileNetV2's 19 stages trained (backbone lr = lr) on "
               f"the cached maps of the frozen ones (stored float16, computed once, shared by these rows), fp32 compute, "
               f"no augmentation, max_epochs {finetune_epochs}, patience 5, {args.finetune_head} head; with the temporal "
               f"shift in their residual blocks (order means nothing here: these rows show what the shift costs)"]
              if finetune_epochs > 0 else []),
            *([f"augmented row: the same {args.finetune_stages} stages fine-tuned live (the CNN runs every epoch) on photos "
               f"augmented by seqvision's random resized crop and colour jitter plus horizontal flips (one draw per set), "
               f"max_epochs {args.augmented_epochs}, patience 5, {args.finetune_head} head"] if args.augmented_epochs > 0 else []),
        ]), flush=True)
    with tempfile.TemporaryDirectory(prefix="seqvision-mvm-") as tmp:
        tmp = Path(tmp)
        manifest = make_dataset(tmp / "data", sets_per_class=sets, pool_per_class=pools)
        cache = tmp / "cache"
        results = common.run_rows(manifest, cache, tmp / "runs", rows=rows, seeds=seeds, image_size=IMAGE_SIZE, epochs=epochs,
                                  record=lambda out: {"macro_f1": out.test_metrics.get("macro_f1", float("nan"))},
                                  extra_rows=finetune, show_curves=bool(finetune))
    table, summary = [], {}
    for name, runs in results.items():
        s = {key: common.spread([r[key] for r in runs]) for key in ("accuracy", "epochs", "seconds")}
        summary[name] = s
        table.append([name, common.fmt(s["accuracy"]), f"{s['epochs']['mean']:.1f}", f"{s['seconds']['mean']:.0f}"])
    print()
    print(common.markdown_table(["MobileNetV2 (frozen unless the row says) +", "test accuracy (10 classes)", "epochs", "s / run"], table))
    print(f"\nmean over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}), in brackets min-max over seeds; "
          f"{k * sets['test']} test sets.")
    for note in common.finetune_epoch_notes(results, {name: row for name, row in finetune.items() if name != augmented}):
        print(note)
    live = [r["epoch_seconds"] for r in results.get(augmented, []) if r.get("epoch_seconds")]
    if live:
        print(f"{augmented}: {sum(live) / len(live):.1f} s per epoch with the CNN live (mean over runs)")
    if finetune_epochs <= 0:
        print("fine-tuned rows on cached maps: not run (--finetune-epochs 0)")
    if common.cache_note(results):
        print(common.cache_note(results))
    print(f"total time {common.elapsed(start)}")
    print(json.dumps({"benchmark": "multiview_majority", "quick": args.quick, "seeds": list(seeds), "epochs": epochs,
                      "sets_per_class": sets, "pool_per_class": pools, "image_size": IMAGE_SIZE,
                      "feature_precision": common.feature_precision(), "results": summary, "runs": results,
                      "finetune_stages": args.finetune_stages if finetune else None,
                      "finetune_epochs": finetune_epochs if finetune_epochs > 0 else None,
                      "augmented_epochs": args.augmented_epochs or None, "finetune_head": args.finetune_head, "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
