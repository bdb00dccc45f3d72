"""How fast, and in how much memory, ``discover()`` indexes a big manifest and a big folder dataset.

    python benchmarks/index_scale.py            # 1,000,000-row CSV (200,000 samples) + 100,000-file folder tree
    python benchmarks/index_scale.py --inspect  # also ``seqvision inspect`` of the manifest (no --check-images)
    python benchmarks/index_scale.py --quick    # ~100x smaller, seconds long (CI): checks it works, not speed

Everything is made in a temporary folder. The image files are a few bytes that are NOT valid images:
discovery never decodes pixels, and the bytes it reads (``rchar`` of /proc/self/io, Linux) show it.

Measured, each in a fresh Python process so that the peak memory (``ru_maxrss``) is the measurement's own:
  manifest   ``discover(manifest.csv)``: one row per image (sample_id,label,path,index), 5 rows per sample,
             the paths drawn from a pool of real files (so most paths repeat); rows/s and peak memory
  folders    ``discover(ROOT)`` of ROOT/<label>/<sample>/<5 files>: files/s, peak memory, bytes read

  inspect    (``--inspect``) ``inspect_data(manifest.csv)`` + ``write_report`` (the HTML page and JSON), as
             ``seqvision inspect MANIFEST --out DIR`` runs them: seconds after the imports (and the imports'
             own), peak memory. Its 2,000 image headers fail (the files are not images) and are reported

Prints one human-readable line per measurement and, last, one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 5
PAYLOAD = b"not-img\n"  # what every "image" holds: 8 bytes, not a decodable image

SIZES = {
    # rows = samples x FRAMES; folder files = labels x per_label x FRAMES
    "full": {"samples": 200_000, "pool": 100_000, "labels": 2, "per_label": 10_000},
    "quick": {"samples": 2_000, "pool": 1_000, "labels": 2, "per_label": 100},
}


def _rchar() -> int | None:
    """Bytes this process has read through read()-like calls so far (Linux), else None."""
    try:
        with open("/proc/self/io", "rb") as fh:
            for line in fh:
                if line.startswith(b"rchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _rss_mib() -> float:
    """Peak resident memory of this process so far, MiB.

    VmHWM of /proc/self/status (Linux) is this process image's own peak; ru_maxrss (the fallback: KiB on
    Linux, bytes on macOS) also keeps the peak of the parent that forked it, from before the exec.
    """
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def measure(source: str) -> dict:
    """Runs in a fresh process: discover(source) once; time, peak memory, bytes read, counts."""
    sys.path.insert(0, str(ROOT / "src"))
    from seqvision.data.discovery import discover

    base_rss = _rss_mib()
    probe_start = _rchar()
    probe = None if probe_start is None else _rchar() - probe_start  # the bytes of one read of /proc/self/io
    read_before = _rchar()
    start = time.perf_counter()
    samples = discover(source)
    seconds = time.perf_counter() - start
    read_after = _rchar()
    return {
        "seconds": seconds,
        "samples": len(samples),
        "frames": sum(len(s.frames) for s in samples),
        "peak_rss_mib": _rss_mib(),
        "base_rss_mib": base_rss,
        "bytes_read": None if read_before is None else read_after - read_before - probe,
    }


def measure_inspect(source: str) -> dict:
    """Runs in a fresh process: what ``seqvision inspect SOURCE --out DIR`` does, after its imports."""
    sys.path.insert(0, str(ROOT / "src"))
    start = time.perf_counter()
    from seqvision.inspection import inspect_data, write_report

    imported = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="seqvision-inspect-") as out:
        report = write_report(inspect_data(source), out)
        seconds = time.perf_counter() - imported
    return {
        "seconds": seconds,
        "import_seconds": imported - start,
        "stages": report.inspection.seconds,
        "samples": len(report.inspection.samples),
        "findings": len(report.findings),
        "peak_rss_mib": _rss_mib(),
    }


def _run_measure(source: Path, what: str = "--_measure") -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), what, str(source)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"measurement of {source} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _write_files(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, PAYLOAD)
        finally:
            os.close(fd)


def make_pool(root: Path, n: int) -> list[str]:
    """n tiny files in folders of 1,000; returns their paths relative to ``root``."""
    rel = []
    for i in range(n):
        folder = f"pool/d{i // 1000:03d}"
        if i % 1000 == 0:
            (root / folder).mkdir(parents=True, exist_ok=True)
        rel.append(f"{folder}/f{i:06d}.png")
    _write_files([root / r for r in rel])
    return rel


def make_manifest(root: Path, pool: list[str], samples: int) -> Path:
    """One row per image; each sample's rows carry a descending index, so ordering has real work to do."""
    path = root / "manifest.csv"
    with open(path, "w", newline="") as fh:
        fh.write("sample_id,label,path,index\n")
        n = len(pool)
        for s in range(samples):
            label = f"class{s % 10}"
            fh.write("".join(f"s{s:06d},{label},{pool[(s * FRAMES + k) % n]},{FRAMES - 1 - k}\n" for k in range(FRAMES)))
    return path


def make_folders(root: Path, labels: int, per_label: int) -> Path:
    """ROOT/<label>/<sample>/f<t>.png with FRAMES files of a few (non-image) bytes each."""
    data = root / "folders"
    paths = []
    for li in range(labels):
        for s in range(per_label):
            folder = data / f"label{li}" / f"s{s:05d}"
            folder.mkdir(parents=True)
            paths.extend(folder / f"f{t}.png" for t in range(FRAMES))
    _write_files(paths)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="~100x smaller: checks that it works, not speed")
    parser.add_argument("--inspect", action="store_true", help="also time seqvision inspect of the manifest")
    parser.add_argument("--_measure", metavar="SOURCE", help=argparse.SUPPRESS)  # internal: the child process
    parser.add_argument("--_measure_inspect", metavar="SOURCE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        print(json.dumps(measure(args._measure)))
        return
    if args._measure_inspect:
        print(json.dumps(measure_inspect(args._measure_inspect)))
        return

    size = SIZES["quick" if args.quick else "full"]
    report: dict = {"quick": args.quick, "python": platform.python_version(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="seqvision-index-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        pool = make_pool(root, size["pool"])
        manifest = make_manifest(root, pool, size["samples"])
        folders = make_folders(root, size["labels"], size["per_label"])
        print(f"made {len(pool):,} pool files, a {manifest.stat().st_size / 2**20:.1f} MiB manifest and "
              f"{size['labels'] * size['per_label'] * FRAMES:,} folder files in {time.perf_counter() - start:.1f} s")

        rows = size["samples"] * FRAMES
        m = _run_measure(manifest)
        if (m["samples"], m["frames"]) != (size["samples"], rows):
            raise SystemExit(f"manifest: expected {size['samples']} samples / {rows} frames, got {m}")
        m.update(rows=rows, unique_files=len(pool), rows_per_s=rows / m["seconds"],
                 manifest_bytes=manifest.stat().st_size)
        report["manifest"] = m
        print(f"manifest  {rows:>9,} rows  {m['samples']:>7,} samples  {m['seconds']:6.2f} s  "
              f"{m['rows_per_s']:>10,.0f} rows/s  peak {m['peak_rss_mib']:7.1f} MiB "
              f"(after import {m['base_rss_mib']:.1f} MiB); read {m['bytes_read'] or 0:,} B, the manifest is "
              f"{m['manifest_bytes']:,} B")
        if args.inspect:
            i = _run_measure(manifest, "--_measure_inspect")
            if i["samples"] != size["samples"]:
                raise SystemExit(f"inspect: expected {size['samples']} samples, got {i}")
            report["inspect"] = i
            stages = ", ".join(f"{k} {v:.2f} s" for k, v in i["stages"].items())
            print(f"inspect   {rows:>9,} rows  {i['samples']:>7,} samples  {i['seconds']:6.2f} s  after "
                  f"{i['import_seconds']:.2f} s of imports; peak {i['peak_rss_mib']:7.1f} MiB; {stages}")

        files = size["labels"] * size["per_label"] * FRAMES
        f = _run_measure(folders)
        if (f["samples"], f["frames"]) != (size["labels"] * size["per_label"], files):
            raise SystemExit(f"folders: expected {size['labels'] * size['per_label']} samples / {files} frames, got {f}")
        f.update(files=files, files_per_s=files / f["seconds"], image_bytes=files * len(PAYLOAD))
        report["folders"] = f
        read = "n/a" if f["bytes_read"] is None else f"{f['bytes_read']:,} B"
        print(f"folders   {files:>9,} files {f['samples']:>7,} samples  {f['seconds']:6.2f} s  "
              f"{f['files_per_s']:>10,.0f} files/s peak {f['peak_rss_mib']:7.1f} MiB "
              f"(after import {f['base_rss_mib']:.1f} MiB); read {read} of {f['image_bytes']:,} B of images")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
