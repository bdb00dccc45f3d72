"""Where the data lives: one epoch of frozen extraction and one live training epoch from local files, local
shards, S3 files and S3 shards (an S3 server on loopback), the same samples each time (issue #27, part 6).

    python benchmarks/data_sources.py                  # 10,000 samples x 8 JPEGs of 64x64
    python benchmarks/data_sources.py --samples 2000   # fewer (say why in the results)
    python benchmarks/data_sources.py --quick          # 8 samples, seconds (CI): checks it works, not speed

The JPEGs are real: random crops of OpenCV's sample photos (Debian ``opencv-doc``) resized to 64x64 and saved
at quality 90 (~2 KB each: the "many small images" case), in ROOT/<label>/<sample>/<8 images> (without
``opencv-doc``, crops of noisy colour gradients; the output says which). The CNN is
the library's ``tiny_cnn`` with random weights at 32 px (a few MFLOPs an image), so reading and decoding
dominate: the figures compare the sources, not CNNs. Each source is read as a user would:

  local files   --data ROOT (a folder)
  local shards  --data PACK (``seqvision pack ROOT --out PACK``, 1 GB shards)
  S3 files      --data s3://bench/files/ (a folder URL, listed once), the objects uploaded by boto3
  S3 shards     --data s3://bench/pack/ (the pack's files uploaded as they are): the index read through fsspec,
                each image a byte range of its shard, read through one open file per shard and process with a
                block cache (4 MiB a request), so the members of a shard cost a request per block, not per image

S3 is moto's server in a process of its own on 127.0.0.1 (loopback: no network latency or bandwidth limit,
but every object is an HTTP request answered by Python). Frozen extraction is ``seqvision extract`` (in this
process, through the CLI's ``main``) into an empty feature cache: the cold read, after the page cache is
dropped where the machine allows it. The training epoch is ``seqvision.training.fit`` (the Python API of
``seqvision train``) with the CNN learning, timed by a callback from its first batch to its last (start-up
and validation left out): the second read of the same bytes, so a warm page cache.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import random
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

OPENCV = Path("/usr/share/doc/opencv-doc/examples/data")
FRAMES, SIDE, CROP = 8, 64, 32  # images per sample, stored size, the CNN's input
BUCKET = "bench"
KEY_ID, SECRET = "AKIABENCHMARK0000001", "benchmark-secret"  # moto accepts any; never a real credential
TARGET_SHARDS_X_FILES, TARGET_S3_SHARDS = 3.0, 0.80


# --------------------------------------------------------------------------------------------- data


def make_data(root: Path, samples: int, seed: int = 0) -> int:
    """``samples`` folders of FRAMES real-photo crops (JPEG, SIDE x SIDE) under two labels; returns bytes written."""
    from PIL import Image

    rng = random.Random(seed)
    pictures = [Image.open(p).convert("RGB") for p in sorted(OPENCV.glob("*.jpg"))] or synthetic_pictures(rng)
    total = 0
    for s in range(samples):
        folder = root / ("a" if s % 2 else "b") / f"s{s:05d}"
        folder.mkdir(parents=True)
        picture = rng.choice(pictures)
        for f in range(FRAMES):  # a drifting crop of one photo: frames of one scene, as a sample would be
            size = rng.randint(SIDE, max(SIDE, min(picture.size) // 2))
            x, y = rng.randint(0, picture.width - size), rng.randint(0, picture.height - size)
            crop = picture.crop((x, y, x + size, y + size)).resize((SIDE, SIDE), Image.BILINEAR)
            path = folder / f"f{f}.jpg"
            crop.save(path, quality=90)
            total += path.stat().st_size
    return total


def synthetic_pictures(rng: random.Random, count: int = 8, side: int = 512) -> list:
    """Where OpenCV's photos are not installed: smooth colour gradients with noise (JPEG sizes near a photo's)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:side, 0:side] / side
    pictures = []
    for _ in range(count):
        a, b, c = (rng.uniform(0.5, 3.0) for _ in range(3))
        channels = [np.sin(a * x * 6 + c), np.cos(b * y * 6 - c), np.sin((a * x + b * y) * 4)]
        noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, 0.15, (3, side, side))
        pixels = np.clip((np.stack(channels) + noise + 1) * 127.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)
        pictures.append(Image.fromarray(pixels))
    return pictures


# --------------------------------------------------------------------------------------------- S3 on loopback


class LoopbackS3:
    """moto's S3 server in a child process on 127.0.0.1 (not this process's threads: the reads measured
    here must not share its interpreter lock), with the environment set as a user's would be."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen([sys.executable, "-c", "from moto.server import main; main()", "-H", "127.0.0.1",
                                         "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.environ.update({"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_ENDPOINT_URL_S3": self.endpoint})
        os.environ.pop("AWS_PROFILE", None)
        import boto3

        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
        for _ in range(200):  # up to 20 s for the server to listen
            try:
                self.client.create_bucket(Bucket=BUCKET)
                return
            except Exception:  # noqa: BLE001 - not listening yet
                time.sleep(0.1)
        self.close()
        sys.exit(f"moto's S3 server did not start on {self.endpoint}")

    def upload(self, folder: Path, prefix: str) -> int:
        """Every file under ``folder`` to ``s3://BUCKET/prefix/<relative path>`` (8 at a time); returns the count."""
        files = [p for p in folder.rglob("*") if p.is_file()]

        def put(path: Path) -> None:
            self.client.put_object(Bucket=BUCKET, Key=f"{prefix}/{path.relative_to(folder).as_posix()}", Body=path.read_bytes())

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, files))
        return len(files)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


# --------------------------------------------------------------------------------------------- measurements


def drop_page_cache() -> str | None:
    """Drop the page cache (cold reads); None when done, else why it could not be."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return None
    except OSError as exc:
        return f"/proc/sys/vm/drop_caches: {exc.strerror or exc}"


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``seqvision ARGV`` in this process (the CLI's own function): exit code, stdout, stderr."""
    from seqvision.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def frozen_extraction(data: str, cache: Path, samples: int, workers: int) -> tuple[float | None, str]:
    """Samples/s of ``seqvision extract`` of ``data`` into the empty cache ``cache``, or None and why not."""
    started = time.perf_counter()
    code, out, err = run_cli(["extract", "--data", data, "--cache-dir", str(cache), "--backbone", "tiny_cnn", "--weights", "none",
                              "--image-size", str(CROP), "--resize-size", str(CROP), "--precision", "32", "--runtime", "torch",
                              "--batch-size", "256", "--num-workers", str(workers), "--no-progress"])
    seconds = time.perf_counter() - started
    if code != 0:
        return None, err.strip().splitlines()[-1] if err.strip() else f"exit {code}"
    if f"extracted {samples * FRAMES} images" not in out:
        return None, f"extracted another number of images than {samples * FRAMES}: {out.strip()}"
    return samples / seconds, f"{seconds:.1f} s"


def epoch_timer():
    """A Lightning callback timing the first training epoch from its start (DataLoader workers starting,
    the first batch read) to its last batch's end; validation and start-up left out."""
    import lightning.pytorch as pl

    class EpochTimer(pl.Callback):
        def __init__(self) -> None:
            self.started: float | None = None
            self.ended: float | None = None
            self.samples = 0

        def on_train_epoch_start(self, trainer, module) -> None:
            if trainer.current_epoch == 0:
                self.started = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            if trainer.current_epoch == 0:
                self.samples += len(batch.sample_ids)
                self.ended = time.perf_counter()

    return EpochTimer()


def training_epoch(data: str, out: Path, workers: int) -> tuple[float | None, str]:
    """Samples/s of one training epoch of ``data`` (the CNN learning), or None and why not."""
    from seqvision.config import DataConfig, ModelConfig, RunConfig, TrainConfig, validate
    from seqvision.errors import SeqVisionError
    from seqvision.training.fit import fit

    timer = epoch_timer()
    cfg = RunConfig(
        data=DataConfig(data=data, image_size=CROP, resize_size=CROP, num_workers=workers, val_fraction=0.02, test_fraction=0.0),
        model=ModelConfig(backbone="tiny_cnn", weights="none", hidden_size=32),
        train=TrainConfig(max_epochs=1, batch_size=32, accelerator="cpu", diagnostics="off", patience=0),
    )
    try:
        validate(cfg, warn=False)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            fit(cfg, out, progress=False, callbacks=[timer], checkpoints=False)
    except SeqVisionError as exc:
        return None, str(exc).splitlines()[0]
    if not timer.samples or timer.ended is None or timer.started is None:
        return None, "no training batch was timed"
    seconds = timer.ended - timer.started
    return timer.samples / seconds, f"{timer.samples} samples in {seconds:.1f} s"


# --------------------------------------------------------------------------------------------- the table


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def ratio(value: float | None, base: float | None) -> str:
    return "-" if value is None or not base else f"{value / base:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000, help="samples of 8 JPEGs (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="8 samples: checks that it works (CI), not speed")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers of extraction and training (default: %(default)s)")
    parser.add_argument("--why", default="", help="a note for the header (e.g. why fewer samples than 10,000)")
    args = parser.parse_args()
    samples = 8 if args.quick else args.samples
    workers = 0 if args.quick else args.num_workers  # quick: no worker processes to start (seconds on 2 cores)
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout if shutil.which("lscpu") else ""
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), platform.processor())

    print(f"# Data sources: frozen extraction and a training epoch from local files, local shards, S3 files and S3 shards "
          f"({samples:,} samples x {FRAMES} JPEGs of {SIDE}x{SIDE}; tiny_cnn, random weights, {CROP} px: reading dominates)")
    print(f"command: python {shlex.join(sys.argv)}")
    if args.why:
        print(f"why: {args.why}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {os.cpu_count()} cores, {model}; "
          f"load average at the start: {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="seqvision-sources-") as tmp:
        tmp = Path(tmp)
        os.environ["SEQVISION_CACHE"] = str(tmp / "cache-home")  # the runtimes' notes too: nothing in ~/.cache
        started = time.perf_counter()
        size = make_data(tmp / "files", samples)
        origin = "OpenCV's photos" if any(OPENCV.glob("*.jpg")) else "noisy gradients (no opencv-doc)"
        print(f"made {samples * FRAMES:,} JPEGs, crops of {origin} ({size / samples / FRAMES / 1024:.1f} KiB each) "
              f"in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        code, out, err = run_cli(["pack", str(tmp / "files"), "--out", str(tmp / "pack")])
        if code != 0:
            sys.exit(f"seqvision pack failed: {err.strip()}")
        shards = len(list((tmp / "pack").glob("*.tar")))
        print(f"seqvision pack: {shards} shard(s) in {time.perf_counter() - started:.1f} s")
        if not args.quick:  # imports, the first DataLoader workers, Lightning's first fit: paid here, not by the first source
            make_data(tmp / "warm", 4, seed=1)
            frozen_extraction(str(tmp / "warm"), tmp / "cache-warm", 4, workers)
            training_epoch(str(tmp / "warm"), tmp / "run-warm", workers)
        s3 = LoopbackS3()
        try:
            started = time.perf_counter()
            uploaded = s3.upload(tmp / "files", "files") + s3.upload(tmp / "pack", "pack")
            print(f"moto S3 server on {s3.endpoint} (a child process); {uploaded:,} objects uploaded in {time.perf_counter() - started:.1f} s")
            sources = {"local files": str(tmp / "files"), "local shards": str(tmp / "pack"),
                       "S3 files": f"s3://{BUCKET}/files/", "S3 shards": f"s3://{BUCKET}/pack/"}
            dropped = []
            for name, data in sources.items():
                # quick: not dropped (the libraries would be read from disk again: seconds, and it checks nothing)
                dropped.append("--quick" if args.quick else drop_page_cache())
                extract, extract_note = frozen_extraction(data, tmp / f"cache-{name}", samples, workers)
                train, train_note = training_epoch(data, tmp / f"run-{name}", workers)
                results[name] = {"extract": extract, "extract_note": extract_note, "train": train, "train_note": train_note}
                print(f"  {name}: extraction {fmt(extract)} samples/s ({extract_note}); training epoch {fmt(train)} samples/s "
                      f"({train_note})", flush=True)
        finally:
            s3.close()
    why = next((w for w in dropped if w), None)
    print("page cache dropped before each source's extraction (sync; echo 3 > /proc/sys/vm/drop_caches)" if why is None else
          f"page cache not dropped ({why}): the 'cold' reads of local files and shards are from memory")
    base = results["local files"]
    print()
    print("| source | frozen extraction, samples/s | training epoch, samples/s | extraction vs local files | training vs local files |")
    print("|---|---|---|---|---|")
    notes = []
    for name, r in results.items():
        print(f"| {name} | {fmt(r['extract'])} | {fmt(r['train'])} | {ratio(r['extract'], base['extract'])} | "
              f"{ratio(r['train'], base['train'])} |")
        notes += [f"{name}, {what}: not measured: {r[what + '_note']}" for what in ("extract", "train") if r[what] is None]
    print()
    print("\n".join(notes) + "\n" if notes else "", end="")
    shards, files, s3_shards = results["local shards"], results["local files"], results["S3 shards"]

    def verdict(value: float | None, target: float) -> str:
        return "missed (not measured)" if value is None else "met" if value >= target else "missed"

    x_files = shards["extract"] / files["extract"] if shards["extract"] and files["extract"] else None
    of_local = s3_shards["extract"] / shards["extract"] if s3_shards["extract"] and shards["extract"] else None
    print(f"target: local shards >= {TARGET_SHARDS_X_FILES:.0f}x local files on the cold read (extraction): "
          f"{'-' if x_files is None else f'{x_files:.2f}x'}, {verdict(x_files, TARGET_SHARDS_X_FILES)}")
    print(f"target: S3 shards >= {TARGET_S3_SHARDS:.0%} of local shards (extraction): "
          f"{'-' if of_local is None else f'{of_local:.0%}'}, {verdict(of_local, TARGET_S3_SHARDS)}")
    print(f"load average at the end: {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(json.dumps({"benchmark": "data_sources", "quick": args.quick, "samples": samples, "frames": FRAMES,
                      "page_cache_dropped": why is None, "results": results}))


if __name__ == "__main__":
    main()
