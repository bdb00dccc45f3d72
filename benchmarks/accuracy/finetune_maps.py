"""Fine-tuning the last stage at cached speed: the same run with the CNN live and on the frozen stages' cached
maps, side by side in one process.

The task is ``multiview_majority.py``'s (sets of 6 Fashion-MNIST photos, the class most of them show; 10
classes; 50 train + 10 val + 30 test sets per class). ImageNet MobileNetV2 (``../shared/weights/``) at
96 px, ``--trainable-stages 1`` (its last 1x1 convolution to 1280 channels learns; its input, the 320x3x3
map of the frozen stages, is cached as float16), ``--no-augment`` (augmentation changes the pixels every
epoch and cannot use cached maps), fp32 everywhere, the same seed: the two runs see the same batches.

It prints each run's seconds per epoch (the mean after the first epoch, which holds start-up work), the
speed-up, both test accuracies, and each run's whole time (the cached run's includes extracting the maps).

    python benchmarks/accuracy/finetune_maps.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import multiview_majority  # noqa: E402

IMAGE_SIZE = 96
VIEWS = 6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny data, 2 epochs (for the tests)")
    args = parser.parse_args()
    start = time.perf_counter()
    common.quiet()
    common.require_fashion()
    multiview_majority.MIN_VIEWS = multiview_majority.MAX_VIEWS = VIEWS
    if args.quick:
        sets, pools, epochs = {"train": 3, "val": 1, "test": 2}, {"train": 20, "test": 10}, 2
    else:
        sets, pools, epochs = {"train": 50, "val": 10, "test": 30}, {"train": 200, "test": 100}, 6
    k, seed = len(common.FASHION_CLASSES), 0
    print(common.header(
        "Last-stage fine-tuning: the CNN live vs the frozen stages' cached maps (same seed, same batches)",
        seeds=(seed,), image_size=IMAGE_SIZE, extra=[
            f"data: {k * sets['train']} train / {k * sets['val']} val / {k * sets['test']} test sets of {VIEWS} Fashion-MNIST photos",
            f"recipe: freeze off, trainable_stages 1, no augmentation, lstm head, max_epochs {epochs}, patience 0, fp32 "
            "(the CNN and the maps' extraction); maps stored as float16",
        ]), flush=True)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="seqvision-ftmaps-") as tmp:
        tmp = Path(tmp)
        manifest = multiview_majority.make_dataset(tmp / "data", sets_per_class=sets, pool_per_class=pools)
        for name, cache in (("CNN live every epoch", "off"), ("cached maps", str(tmp / "cache"))):
            cfg = common.base_config(manifest, tmp / "cache", seed=seed, image_size=IMAGE_SIZE, max_epochs=epochs)
            cfg.model.freeze, cfg.model.trainable_stages, cfg.data.augment = False, 1, False
            cfg.data.cache, cfg.train.patience = cache, 0
            out = common.train_run(cfg, tmp / name.replace(" ", "-"))
            later = out.epoch_seconds[1:] or out.epoch_seconds
            rows[name] = {"accuracy": out.accuracy, "epoch_seconds": statistics.fmean(later), "first_epoch_seconds": out.epoch_seconds[0],
                          "seconds": out.seconds, "epochs": out.epochs, "cache": out.cache}
            print(f"  {name:22s}: test accuracy {out.accuracy:.3f}, {rows[name]['epoch_seconds']:.2f} s per epoch after the first "
                  f"(first {out.epoch_seconds[0]:.2f} s), {out.seconds:.0f} s in all", flush=True)
    live, maps = rows["CNN live every epoch"], rows["cached maps"]
    speedup = live["epoch_seconds"] / maps["epoch_seconds"]
    print()
    print(common.markdown_table(
        ["MobileNetV2, last stage fine-tuned", "test accuracy", "s / epoch", "run (with the maps' extraction)"],
        [[name, f"{r['accuracy']:.3f}", f"{r['epoch_seconds']:.2f}", f"{r['seconds']:.0f} s"] for name, r in rows.items()]))
    print(f"\nepoch on cached maps: {speedup:.1f}x faster than live (target >= 5x); test accuracy {maps['accuracy']:.3f} vs "
          f"{live['accuracy']:.3f} (one seed; the float16 maps move Adam's steps slightly)")
    print(f"total time {common.elapsed(start)}")
    print(json.dumps({"benchmark": "finetune_maps", "quick": args.quick, "epochs": epochs, "sets_per_class": sets,
                      "rows": rows, "speedup": speedup, "seconds": time.perf_counter() - start}, default=str))


if __name__ == "__main__":
    main()
