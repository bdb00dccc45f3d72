"""Load on ``seqvision serve`` over loopback: latency and throughput with and without dynamic batching.

The real command (``python -m seqvision serve CKPT``) runs in a subprocess on 127.0.0.1; this process
fires a fixed number of ``POST /predict`` requests from ``--clients`` concurrent clients (each with its
own keep-alive connection), for each request shape of ``--images`` (1 and 4 images per sample), against
two servers: with batching (requests arriving within ``--max-wait-ms`` share CNN passes) and without
(``--max-batch-images 1 --max-wait-ms 0``: one request per pass). It reports p50/p99 latency,
requests/s, images/s, CNN passes and images per pass and the share of the time the model worker was
busy (from ``GET /health``), the errors (must be 0), and the largest difference between the two
servers' outputs for the same request. It stops by itself: a fixed number of requests per run, and no
new one after ``--max-seconds``.

The checkpoint: MobileNetV2, frozen, with the real ImageNet weights of ``../shared/weights/`` when they
are there (else random weights, said in the output), trained for one epoch on a few samples; the images:
224 x 224 JPEG crops of the real photos of Debian's ``opencv-doc`` (else random pixels, said), as in
``benchmarks/predict_memory.py``. ``--quick``: the tiny test CNN on 32 x 32 crops and 40 requests per
run (a smoke run for the tests: it checks that it works, not speed).

    python benchmarks/serve_load.py [--quick] [--requests 300] [--clients 8] [--images 1 4] [--max-wait-ms 5]
                                    [--precision 32] [--runtime auto|torch|onnxruntime|openvino]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from predict_memory import PHOTOS, WEIGHTS, make_images  # noqa: E402  (the same checkpoint recipe and photos)
from seqvision.config import RUNTIME_CHOICES  # noqa: E402


def train_checkpoint(work: Path, quick: bool) -> Path:
    """A frozen MobileNetV2 (real weights when there) trained one epoch on 8 short samples of real crops;
    ``quick``: the tiny test CNN on 32 x 32 images."""
    from seqvision.cli import main

    data = work / "train"
    for label in ("a", "b"):
        for s in range(4):
            make_images(data / label / f"s{s}", 3, seed=100 + 10 * s + (label == "b"))
    if quick:
        model = ["--backbone", "tiny_cnn", "--weights", "none", "--image-size", "32", "--resize-size", "32", "--hidden-size", "8"]
    else:
        model = ["--backbone", "mobilenet_v2", "--weights", str(WEIGHTS) if WEIGHTS.exists() else "none", "--freeze",
                 "--cache", str(work / "cache")]
    code = main(["train", "--data", str(data), "--out", str(work / "run"), *model, "--max-epochs", "1", "--val-fraction", "0.25",
                 "--test-fraction", "0", "--no-progress", "--diagnostics", "off", "--seed", "0", "--num-workers", "0"])
    if code != 0:
        raise SystemExit(f"training the checkpoint failed (exit {code})")
    return work / "run" / "best.ckpt"


def start_server(ckpt: Path, batching: list[str], log: Path, key: str) -> tuple[subprocess.Popen, str]:
    """``seqvision serve`` in a subprocess on a free loopback port (``--port 0``: the port it got is read
    from its log, so no other process can take it in between), with ``key`` as its API key (so the
    clients talk to this server and no other); returns once ``GET /health`` answers."""
    import httpx

    cmd = [sys.executable, "-m", "seqvision", "serve", str(ckpt), "--port", "0", "--log-level", "info", *batching]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "SEQVISION_API_KEY": key}
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log.read_text())
        try:
            if found and httpx.get(f"{found[1]}/health", headers={"X-API-Key": key}, timeout=2).status_code == 200:
                return proc, found[1]
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not answer /health within 180 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown; the batcher answers what is queued
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def fire(base: str, headers: dict, bodies: list[list[tuple]], requests: int, clients: int, max_seconds: float) -> dict:
    """``requests`` POSTs (request i sends ``bodies[i % len(bodies)]``) from ``clients`` threads, each with
    its own keep-alive connection. Returns latencies, wall time, errors and each request's outputs."""
    import httpx

    lock = threading.Lock()
    state = {"next": 0, "latencies": [], "errors": [], "outputs": {}}
    stop_at = time.monotonic() + max_seconds

    def client() -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=120) as http:
            while True:
                with lock:
                    i = state["next"]
                    state["next"] += 1
                if i >= requests or time.monotonic() > stop_at:
                    return
                start = time.perf_counter()
                try:
                    res = http.post("/predict", files=bodies[i % len(bodies)])
                    ok = res.status_code == 200
                    detail = res.json() if ok else f"{res.status_code} {res.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, detail = False, f"{type(exc).__name__}: {exc}"
                seconds = time.perf_counter() - start
                with lock:
                    if ok:
                        state["latencies"].append(seconds)
                        row = detail["predictions"][0]
                        state["outputs"][i] = [v for k, v in row.items() if k not in ("sample", "image", "prediction")]
                    else:
                        state["errors"].append(detail)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state["wall"] = time.perf_counter() - start
    state["unsent"] = max(0, requests - len(state["latencies"]) - len(state["errors"]))
    return state


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation between the sorted values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    at = q * (len(ordered) - 1)
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def run_mode(name: str, ckpt: Path, batching: list[str], pool: list[Path], args, work: Path) -> list[dict]:
    """One server with ``batching`` options; a measured run per request shape (``args.images``)."""
    log = work / f"server-{name.replace(' ', '-')}.log"
    key = secrets.token_hex(16)
    proc, base = start_server(ckpt, batching, log, key)
    try:
        runs = [measure(base, key, name, batching, requests_of(pool, k), k, args) for k in args.images]
    finally:
        stop_server(proc)
    if any(r["errors"] for r in runs):  # the server's side of the story
        print(f"server log ({name}):\n{log.read_text()[-3000:]}")
    return runs


def requests_of(pool: list[Path], k: int) -> list[list[tuple]]:
    """Multipart bodies of ``k`` consecutive images of the pool each (wrapping round)."""
    return [[("files", (p.name, p.read_bytes(), "image/jpeg")) for p in (pool * 2)[i : i + k]] for i in range(len(pool))]


def measure(base: str, key: str, name: str, batching: list[str], bodies: list[list[tuple]], k: int, args) -> dict:
    import httpx

    auth = {"X-API-Key": key}
    fire(base, auth, bodies, args.warmup, 1, args.max_seconds)  # first calls: lazy setup, caches, allocator
    before = httpx.get(f"{base}/health", headers=auth).json()["batching"]
    got = fire(base, auth, bodies, args.requests, args.clients, args.max_seconds)
    after = httpx.get(f"{base}/health", headers=auth).json()["batching"]
    passes = after["cnn_passes"] - before["cnn_passes"]
    images = after["images"] - before["images"]
    done = len(got["latencies"])
    return {
        "images_per_request": k, "mode": name, "options": " ".join(batching), "requests": done,
        "errors": len(got["errors"]) + got["unsent"],
        "p50_ms": 1000 * percentile(got["latencies"], 0.50), "p99_ms": 1000 * percentile(got["latencies"], 0.99),
        "requests_per_s": done / got["wall"], "images_per_s": images / got["wall"], "seconds": got["wall"],
        "cnn_passes": passes, "batches": after["batches"] - before["batches"],
        "images_per_pass": images / passes if passes else 0.0,
        "model_busy": (after["busy_s"] - before["busy_s"]) / got["wall"],  # share of the wall time the worker computed
        "first_errors": got["errors"][:3], "outputs": got["outputs"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny CNN, 32x32 images, 40 requests (a smoke run)")
    parser.add_argument("--requests", type=int, help="requests per run (default 300; quick 40)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default %(default)s)")
    parser.add_argument("--images", type=int, nargs="+", default=[1, 4], help="images per request, a run each (default: 1 4)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="the batching server's --max-wait-ms (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=8, help="requests before each measured run (default %(default)s)")
    parser.add_argument("--max-seconds", type=float, default=240.0, help="no new request after this long, per run (default %(default)s)")
    parser.add_argument("--checkpoint", help="serve this checkpoint instead of training one")
    parser.add_argument("--precision", choices=["auto", "32", "bf16"], default="auto", help="the server's --precision (default: %(default)s)")
    parser.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto", help="the server's --runtime: what runs the CNN "
                        "(default: %(default)s)")
    args = parser.parse_args()
    args.requests = args.requests or (40 if args.quick else 300)
    import torch

    from seqvision.runtime import inference_dtype

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}")
    weights = f"the real ImageNet {WEIGHTS}" if WEIGHTS.exists() else "random (no shared weights)"
    model = args.checkpoint or ("tiny_cnn (random), 32x32" if args.quick else f"frozen mobilenet_v2 + LSTM, weights {weights}")
    print(f"model: {model}; CNN precision {args.precision} = {inference_dtype(torch.device('cpu'), args.precision)}, "
          f"--runtime {args.runtime} (the server's log says what auto chose)")
    images = "64x64 random JPEGs" if args.quick else "224x224 JPEG crops of " + ("the opencv-doc photos" if PHOTOS.is_dir() else "random pixels")
    print(f"load per run: {args.requests} requests of {' or '.join(map(str, args.images))} images ({images}) from {args.clients} "
          f"concurrent clients over loopback, after {args.warmup} warm-up requests; other server options: the defaults")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt = Path(args.checkpoint) if args.checkpoint else train_checkpoint(work, args.quick)
        folder = make_images(work / "pool", 32) if not args.quick else _small_images(work / "pool", 32)
        pool = sorted(folder.iterdir(), key=lambda p: int(p.stem[1:]))
        cnn = ["--precision", args.precision, "--runtime", args.runtime]  # both servers' CNN
        runs = run_mode("batching", ckpt, ["--max-wait-ms", f"{args.max_wait_ms:g}", *cnn], pool, args, work)
        runs += run_mode("no batching", ckpt, ["--max-wait-ms", "0", "--max-batch-images", "1", *cnn], pool, args, work)
    report(sorted(runs, key=lambda r: r["images_per_request"]), args)


def _small_images(folder: Path, n: int) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for t in range(n):
        Image.fromarray(np.random.default_rng(t).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"f{t}.jpg", quality=90)
    return folder


def report(runs: list[dict], args) -> None:
    print("| images/request | mode | server options | requests | errors | p50 latency | p99 latency | requests/s | images/s "
          "| CNN passes | images/pass | model busy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['images_per_request']} | {r['mode']} | {r['options']} | {r['requests']} | {r['errors']} | {r['p50_ms']:.0f} ms | "
              f"{r['p99_ms']:.0f} ms | {r['requests_per_s']:.1f} | {r['images_per_s']:.1f} | {r['cnn_passes']} | "
              f"{r['images_per_pass']:.1f} | {100 * r['model_busy']:.0f}% |")
    for r in runs:
        for e in r["first_errors"]:
            print(f"error ({r['images_per_request']} images, {r['mode']}): {e}")
    summary = {}
    for k in args.images:
        a, b = [r for r in runs if r["images_per_request"] == k]  # batching, no batching
        common = sorted(set(a["outputs"]) & set(b["outputs"]))
        diff = max((abs(x - y) for i in common for x, y in zip(a["outputs"][i], b["outputs"][i])), default=0.0)
        speedup = a["requests_per_s"] / b["requests_per_s"] if b["requests_per_s"] else float("nan")
        summary[str(k)] = {"speedup": speedup, "max_output_diff": diff}
        print(f"{k} image(s) per request: throughput with batching / without x{speedup:.2f}; "
              f"max |output difference| between the two runs for the same request {diff:.1e}")
    print(json.dumps({
        "runs": [{k: v for k, v in r.items() if k not in ("outputs", "first_errors")} for r in runs],
        "summary": summary, "clients": args.clients, "date": time.strftime("%Y-%m-%d"),
    }))


if __name__ == "__main__":
    main()
