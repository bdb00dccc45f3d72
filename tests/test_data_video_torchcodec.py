"""TorchCodec behind read_frames: the same frames as PyAV for the same times (files, packed members, file-like
sources), the decoder in the cache key and the checkpoint, --video-decoder checked at the boundary, and PyAV's
seeks into an MPEG-TS that has no index. Tests that decode with TorchCodec skip where it cannot load."""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from seqvision.cli import main  # noqa: E402
from seqvision.data import video_torchcodec  # noqa: E402
from seqvision.data.transforms import Preprocessing, resolve_preprocessing  # noqa: E402
from seqvision.data.video import probe_video, read_frames  # noqa: E402
from seqvision.data.video_torchcodec import resolve_video_decoder, usable_video_decoder  # noqa: E402
from seqvision.errors import ConfigError  # noqa: E402
from seqvision.features.cache import CacheKey  # noqa: E402

FPS = 12
FRAMES = 24
# TorchCodec and PyAV both convert with FFmpeg's swscale: at full size their H.264 frames were identical on
# every clip measured (benchmarks/video_decoders.py). Reduced, TorchCodec's antialiased resize is within a
# grey level of --exact-decode's (full decode, then torchvision's antialiased resize) on average
FULL_TOLERANCE = 2
REDUCED_MEAN_TOLERANCE = 1.5


def _write(path: Path, size: tuple[int, int] = (128, 96), gop: int = 8) -> Path:
    """``FRAMES`` frames of H.264 at ``FPS``, a key frame every ``gop``: smooth waves (a photo's energy is at low
    frequencies) that move a little each frame, so every frame differs from its neighbours."""
    width, height = size
    x = np.arange(width)[None, :, None] / 6.0
    y = np.arange(height)[:, None, None] / 5.0
    phase = np.array([0.0, 2.0, 4.0])
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS, options={"g": str(gop), "keyint_min": str(gop), "crf": "10"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(FRAMES):
            rgb = (128 + 70 * np.sin(x + phase + 0.5 * i) + 40 * np.cos(y - phase - 0.3 * i)).clip(0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def _reference(path: Path) -> list[torch.Tensor]:
    """Every frame in order, by a plain decode without seeking: the truth."""
    with av.open(str(path)) as container:
        return [torch.from_numpy(f.to_ndarray(format="rgb24")).permute(2, 0, 1) for f in container.decode(video=0)]


def _which(frame: torch.Tensor, reference: list[torch.Tensor]) -> int:
    """The index of the reference frame closest to ``frame``."""
    return min(range(len(reference)), key=lambda i: float((reference[i].float() - frame.float()).abs().mean()))


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("clips") / "clip.mp4")


# times on frames, between frames, and a repeat, in no particular order
TIMES = [1.5, 0.0, 0.26, 1.0 / FPS, 0.9, 1.9, 0.26]


def test_pyav_seeks_into_an_mpeg_ts_without_an_index_return_the_frames_shown(tmp_path, clip, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from video_decoders import remux

    ts = remux(clip, tmp_path / "clip.ts")  # the damaged kind of file the benchmark measures
    reference = _reference(ts)
    frames, notes = read_frames(ts, TIMES, FPS, decoder="pyav")
    assert [_which(f, reference) for f in frames] == [round(t * FPS) for t in TIMES] and not notes


def test_pyav_decodes_on_rather_than_seek_back_to_the_key_frame_it_passed(tmp_path):
    one_gop = _write(tmp_path / "one-gop.mp4", gop=FRAMES)  # MP4's index shows the only key frame is the first
    stats: dict = {}
    times = [0.0, 1.2, 1.9]  # gaps over a second: without the index each would seek back to frame 0
    frames, _ = read_frames(one_gop, times, FPS, stats=stats)
    assert [_which(f, _reference(one_gop)) for f in frames] == [0, 14, 23] and stats["decoded"] <= FRAMES


def test_the_decoder_is_in_the_cache_key_and_the_checkpoint():
    pyav, codec = Preprocessing(224, 256), Preprocessing(224, 256, video_decoder="torchcodec")
    assert "video_decoder" not in pyav.to_dict()  # PyAV's keys hash as before the field existed
    assert codec.to_dict()["video_decoder"] == "torchcodec"
    assert Preprocessing.from_dict(codec.to_dict()) == codec and Preprocessing.from_dict(pyav.to_dict()) == pyav
    encoder = torch.nn.Conv2d(3, 4, 1)
    encoder.name, encoder.pool = "probe", "avg"
    assert CacheKey.for_encoder(encoder, pyav).digest != CacheKey.for_encoder(encoder, codec).digest


def test_auto_resolves_to_pyav_and_pyav_never_needs_torchcodec():
    assert resolve_video_decoder("pyav") == "pyav"
    assert resolve_video_decoder("auto") == ("torchcodec" if video_torchcodec.AUTO_PREFERS_TORCHCODEC and
                                             video_torchcodec.torchcodec_problem() is None else "pyav")
    assert resolve_preprocessing(Preprocessing(), video_decoder="pyav").video_decoder == "pyav"
    with pytest.raises(ConfigError, match="not one of"):
        resolve_video_decoder("decord")


@pytest.fixture
def no_torchcodec(monkeypatch):
    """TorchCodec made unimportable here, as on a machine without it."""
    monkeypatch.setitem(sys.modules, "torchcodec", None)
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    video_torchcodec.torchcodec_problem.cache_clear()
    yield
    video_torchcodec.torchcodec_problem.cache_clear()


def test_asking_for_torchcodec_where_it_is_missing_is_one_line_before_any_work(no_torchcodec, tmp_path, capsys, clip):
    with pytest.raises(ConfigError, match=r"--video-decoder torchcodec: TorchCodec is not installed.*pip install 'seqvision\[torchcodec\]'"):
        resolve_video_decoder("torchcodec")
    assert resolve_video_decoder("auto") == "pyav"
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "a" / "clip.mp4").write_bytes(clip.read_bytes())
    code = main(["extract", "--data", str(tmp_path / "data"), "--backbone", "tiny_cnn", "--weights", "none",
                 "--out", str(tmp_path / "cache"), "--video-decoder", "torchcodec", "--no-progress"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and "TorchCodec is not installed" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "cache").exists()  # nothing written: refused before any work


def test_a_checkpoint_decoded_by_torchcodec_predicts_with_pyav_where_it_is_missing(no_torchcodec):
    decoder, why = usable_video_decoder("torchcodec")
    assert decoder == "pyav" and "TorchCodec" in why
    assert usable_video_decoder("pyav") == ("pyav", None)


def test_a_bad_video_decoder_option_is_one_line(tmp_path, capsys):
    assert main(["extract", "--data", str(tmp_path), "--video-decoder", "ffmpeg"]) == 2
    err = capsys.readouterr().err
    assert "--video-decoder: invalid choice: 'ffmpeg'" in err and len(err.strip().splitlines()) == 1


# -- with TorchCodec ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torchcodec_here():
    pytest.importorskip("torchcodec.decoders", reason="TorchCodec (and FFmpeg's shared libraries) not installed")


def test_torchcodec_gives_pyav_frames_at_full_size_and_exact_decodings_reduced(torchcodec_here, clip):
    from torchvision.transforms.v2 import functional as F

    ours, _ = read_frames(clip, TIMES, FPS, decoder="torchcodec")
    full, _ = read_frames(clip, TIMES, FPS, decoder="pyav")
    assert all(int((a.int() - b.int()).abs().max()) <= FULL_TOLERANCE for a, b in zip(ours, full))
    ours, _ = read_frames(clip, TIMES, FPS, decoder="torchcodec", decode_size=48)
    theirs, _ = read_frames(clip, TIMES, FPS, decoder="pyav", decode_size=48)
    assert {tuple(f.shape) for f in ours} == {tuple(f.shape) for f in theirs} == {(3, 48, 64)}  # one size rule
    exact = [F.resize(f, [48, 64], antialias=True) for f in full]
    assert all(float((a.float() - b.float()).abs().mean()) <= REDUCED_MEAN_TOLERANCE for a, b in zip(ours, exact))


def test_torchcodec_seeks_return_the_frames_shown_and_note_times_past_the_end(torchcodec_here, clip):
    reference = _reference(clip)
    late = FRAMES / FPS + 0.5  # past the last frame: the last frame, and a note
    frames, notes = read_frames(clip, [*TIMES, late], FPS, decoder="torchcodec")
    assert [_which(f, reference) for f in frames] == [round(t * FPS) for t in TIMES] + [FRAMES - 1]
    assert all(int((f.int() - reference[round(t * FPS)].int()).abs().max()) <= FULL_TOLERANCE for f, t in zip(frames, TIMES))
    assert len(notes) == 1 and "no frame at" in notes[0] and "clip.mp4" in notes[0]


def test_torchcodec_reads_packed_members_and_file_like_sources(torchcodec_here, tmp_path, clip):
    from seqvision.data.discovery import discover
    from seqvision.data.pack_writer import pack

    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "a" / "clip.mp4").write_bytes(clip.read_bytes())
    pack(tmp_path / "data", tmp_path / "pack")
    member = discover(tmp_path / "pack", require_labels=False)[0].video.path
    want, _ = read_frames(clip, TIMES, FPS, decoder="torchcodec")
    got, _ = read_frames(member, TIMES, FPS, decoder="torchcodec")
    assert all(torch.equal(a, b) for a, b in zip(want, got))
    info = probe_video(clip)
    with open(clip, "rb") as fh:  # what a URL is read through: a seekable file, without the exact scan
        got, _ = video_torchcodec.read_frames_torchcodec(fh, TIMES, FPS, size=(info.width, info.height), shown_as="clip",
                                                         seek_mode="approximate")
    assert all(torch.equal(a, b) for a, b in zip(want, got))
