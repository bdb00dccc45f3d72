"""`seqvision tune` on real photos: a 30-trial search against the default recipe, side by side in one run.

The task is ``multiview_majority.py``'s (sets of Fashion-MNIST photos, the class most of them show; 10
classes), with every set holding 6 photos: 80 train + 20 val + 20 test sets per class, 1,200 sets of 6
photos in all. The backbone is the frozen ImageNet MobileNetV2 of ``../shared/weights/`` at 96 px, cached.

Side by side, same split, same seed, one process:
1. the default recipe: ``seqvision train`` with the defaults (LSTM, hidden 256, lr 1e-3, batch 8, ...);
2. ``seqvision tune`` with the default space and ``--trials 30`` (the first trial is the default recipe),
   then the best trial trained again from ``best_config.yaml`` and tested once. Head trials only
   (``--motion off``, as measured in the README); ``--motion auto`` adds tune's motion trials.

It prints the wall time of the whole tune (feature extraction for the three poolings included, and the
final training of the best trial), each trial's line, and the test accuracy of both models.

    python benchmarks/accuracy/tune_multiview.py [--quick]
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--quick", action="store_true", help="tiny data, 3 trials of 2 epochs (for the tests)")
    parser.add_argument("--trials", type=int, default=None, help="default: 30 (quick: 3)")
    parser.add_argument("--motion", choices=("auto", "off", "only"), default="off",
                        help="tune's motion trials (default: off, heads only, as the README measured)")
    args = parser.parse_args()
    start = time.perf_counter()
    common.quiet()
    common.require_fashion()
    multiview_majority.MIN_VIEWS = multiview_majority.MAX_VIEWS = VIEWS  # every set: 6 photos
    if args.quick:
        sets, pools, trials, space = {"train": 4, "val": 2, "test": 2}, {"train": 20, "test": 10}, 3, "max_epochs: 2\nbatch_size: [8]\n"
    else:
        sets, pools, trials, space = {"train": 80, "val": 20, "test": 20}, {"train": 200, "test": 100}, 30, None
    trials = args.trials or trials
    k, seed = len(common.FASHION_CLASSES), 0
    print(common.header(
        f"seqvision tune: {trials} trials against the default recipe, multi-view majority (sets of {VIEWS} photos)",
        seeds=(seed,), image_size=IMAGE_SIZE, extra=[
            f"data: {k * sets['train']} train / {k * sets['val']} val / {k * sets['test']} test sets of {VIEWS} Fashion-MNIST "
            f"photos (pools of {pools['train'] * k} photos of the official train split, {pools['test'] * k} of the test split)",
            "search: Optuna TPE (seed 0), median pruner, the default space (every head, hidden size, layers, direction, "
            f"temporal diff, pooling avg|max|grid2, dropout, lr, weight decay, batch size, epochs); --motion {args.motion}"
            + (f"; space file: {space.strip()!r}" if space else ""),
        ]), flush=True)
    with tempfile.TemporaryDirectory(prefix="seqvision-tune-") as tmp:
        tmp = Path(tmp)
        manifest = multiview_majority.make_dataset(tmp / "data", sets_per_class=sets, pool_per_class=pools)
        cfg = common.base_config(manifest, tmp / "cache", seed=seed, image_size=IMAGE_SIZE, max_epochs=2 if args.quick else 20)
        began = time.perf_counter()
        default = common.train_run(cfg, tmp / "default")
        default_seconds = time.perf_counter() - began
        print(f"default recipe (lstm, hidden 256, lr 1e-3, batch 8): test accuracy {default.accuracy:.3f} "
              f"({default.epochs} epochs, {default_seconds:.0f} s, features computed for it: {default.cache['computed']})", flush=True)
        from seqvision.tuning.study import tune

        space_file = None
        if space:
            space_file = tmp / "space.yaml"
            space_file.write_text(space)
        began = time.perf_counter()
        result = tune(cfg, tmp / "tune", trials=trials, motion=args.motion, space_file=space_file,
                      say=lambda line: print(line, flush=True))
        tune_seconds = time.perf_counter() - began
    tuned = result.test_metrics["accuracy"]
    print()
    print(common.markdown_table(
        ["model", "test accuracy", "wall time"],
        [["default recipe (seqvision train)", f"{default.accuracy:.3f}", f"{default_seconds:.0f} s"],
         [f"best of {result.finished} trials ({result.pruned} pruned)", f"{tuned:.3f}", f"{tune_seconds / 60:.1f} min (whole tune)"]]))
    print(f"\nbest trial {result.best_trial}: val_acc {result.best_value:.4f}, trained again from best_config.yaml: "
          f"{result.reproduced_value:.4f}; options: {json.dumps(result.best_params)}")
    print(f"the whole tune (extraction of 3 poolings, {result.finished} trials, the best trained again and tested): "
          f"{tune_seconds / 60:.1f} min (target: <= 10 min); best >= default on the test split: {tuned >= default.accuracy}")
    print(f"total time {common.elapsed(start)}")
    print(json.dumps({"benchmark": "tune_multiview", "quick": args.quick, "trials": trials, "sets_per_class": sets,
                      "default_accuracy": default.accuracy, "tuned_accuracy": tuned, "tune_seconds": tune_seconds,
                      "default_seconds": default_seconds, "best_params": result.best_params, "best_value": result.best_value,
                      "reproduced_value": result.reproduced_value, "finished": result.finished, "pruned": result.pruned}))


if __name__ == "__main__":
    main()
