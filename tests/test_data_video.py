"""Tiny real videos written with PyAV: probing, seeking, frame order and times, sampling, bad input."""

from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import av  # noqa: E402  (a dependency: a missing PyAV must fail, not skip)

from seqvision.data.dataset import SequenceDataset, collate  # noqa: E402
from seqvision.data.samples import Sample, VideoClip  # noqa: E402
from seqvision.data.sampling import SamplingPolicy  # noqa: E402
from seqvision.data.transforms import ClipTransform, Preprocessing  # noqa: E402
from seqvision.data.video import probe_video, read_frames  # noqa: E402
from seqvision.errors import BadFileError  # noqa: E402

from conftest import fast_config  # noqa: E402


def write_video(path, frames=20, fps=10, gop=4, size=32, times=None, codec="mpeg4"):
    """Frame i is a flat grey of level 8 * (i mod 32) (so a decoded frame tells which one it is)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.options = {"qscale": "2"}
        if times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 8 * (i % 32), np.uint8), format="rgb24")
            if times is not None:
                frame.pts = int(times[i] * 1000)
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def level(frame: torch.Tensor) -> int:
    return int(round(frame.float().mean().item() / 8))


def test_probe_counts_frames_and_clips(tmp_path):
    video = write_video(tmp_path / "v.mp4")
    info = probe_video(video)
    assert (info.num_frames, info.fps) == (20, 10.0)
    clip = probe_video(video, 0.5, 1.5)
    assert clip.num_frames == 10 and clip.frame_time(0) == 0.5


def test_frames_come_back_in_the_requested_order_and_time(tmp_path):
    video = write_video(tmp_path / "v.mp4")
    frames, notes = read_frames(video, [1.0, 0.0, 1.9, 0.5, 1.0], fps=10)
    assert [level(f) for f in frames] == [10, 0, 19, 5, 10]
    assert frames[0].shape == (3, 32, 32) and frames[0].dtype == torch.uint8 and not notes


def test_seeking_decodes_only_near_the_wanted_frames(tmp_path):
    video = write_video(tmp_path / "long.mp4", frames=300, fps=25, gop=10)
    stats = {}
    frames, _ = read_frames(video, [2.0, 6.0, 11.0], fps=25, stats=stats)
    assert [level(f) for f in frames] == [50 % 32, 150 % 32, 275 % 32]
    assert stats["decoded"] <= 3 * 12  # a key frame run per target, never the 300 frames


def test_variable_frame_rate_is_sampled_by_time(tmp_path):
    times = [0.0, 0.1, 0.2, 1.0, 1.1, 1.2, 2.0, 2.1]
    video = write_video(tmp_path / "vfr.mkv", frames=len(times), times=times)
    info = probe_video(video)
    frames, _ = read_frames(video, [0.0, 1.0, 2.0], fps=info.fps)
    assert [level(f) for f in frames] == [0, 3, 6]


class _UntimedVideo:
    """PyAV's container as read_frames uses it, for a 10 fps video of 100 frames (a key frame every 10th)
    whose decoded frames carry no timestamp (``pts`` None; with ``key_pts``, only the key frames have one),
    as some raw or damaged streams give. A seek lands on the key frame before the position asked for.
    (PyAV writes no such file that it can also seek in, hence the stand-in.)"""

    def __init__(self, key_pts: bool) -> None:
        self.streams = SimpleNamespace(video=[SimpleNamespace(start_time=0, time_base=Fraction(1, 10), thread_type=None)])
        self.key_pts = key_pts
        self.position = 0

    def seek(self, offset, *, stream, backward, any_frame):
        self.position = min(offset, 99) // 10 * 10

    def decode(self, stream):
        for i in range(self.position, 100):
            yield SimpleNamespace(pts=i if self.key_pts and i % 10 == 0 else None, width=4, height=4,
                                  to_ndarray=lambda i=i, **_: np.full((4, 4, 3), i, np.uint8))

    def close(self):
        pass


@pytest.mark.parametrize("key_pts", [False, True], ids=["no timestamps", "key frames only"])
def test_frames_without_timestamps_are_timed_from_the_start_not_the_seek(monkeypatch, key_pts):
    import seqvision.data.video as video_module

    monkeypatch.setattr(video_module, "_open", lambda path: _UntimedVideo(key_pts))
    frames, notes = read_frames("untimed.h264", [5.0, 0.0, 0.3, 2.0, 7.3, 9.9], fps=10)
    assert [int(f[0, 0, 0]) for f in frames] == [50, 0, 3, 20, 73, 99] and not notes
    frames, notes = read_frames("untimed.h264", [7.3, 5.0], fps=10)  # the first seek lands mid-video
    assert [int(f[0, 0, 0]) for f in frames] == [73, 50] and not notes


@pytest.mark.parametrize(
    "policy, train, n, expected",
    [
        (SamplingPolicy("uniform", num_frames=4), False, 10, [[0, 3, 6, 9]]),
        (SamplingPolicy("uniform"), True, 3, [[0, 1, 2]]),
        (SamplingPolicy("stride", stride=3), False, 10, [[0, 3, 6, 9]]),
        (SamplingPolicy("stride", stride=2, num_frames=2), False, 10, [[2, 4]]),  # centred in 0 2 4 6 8
        (SamplingPolicy("random", num_frames=4, clips=3), False, 10, [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]),
        (SamplingPolicy("random", num_frames=4), False, 10, [[3, 4, 5, 6]]),
        (SamplingPolicy("random", num_frames=8), True, 5, [[0, 1, 2, 3, 4]]),
        (SamplingPolicy("segments", num_frames=3), False, 9, [[1, 4, 7]]),
    ],
)
def test_sampling_policies(policy, train, n, expected):
    assert policy.clips_for(n, train=train) == expected


def test_training_draws_are_random_but_in_order():
    import random

    rng = random.Random(0)
    seg = [SamplingPolicy("segments", num_frames=4).clips_for(20, train=True, rng=rng)[0] for _ in range(20)]
    assert all(c == sorted(c) and all(5 * k <= i < 5 * (k + 1) for k, i in enumerate(c)) for c in seg)
    assert len({tuple(c) for c in seg}) > 1
    clips = [SamplingPolicy("random", num_frames=4).clips_for(20, train=True, rng=rng)[0] for _ in range(20)]
    assert all(c == list(range(c[0], c[0] + 4)) for c in clips) and len({c[0] for c in clips}) > 1
    assert SamplingPolicy("stride", fps=5).clips_for(10, train=False, source_fps=25)[0] == [0, 5]


def test_video_sample_through_the_dataset_with_multi_clip_evaluation(tmp_path):
    video = write_video(tmp_path / "v.mp4")
    sample = Sample("v", [], label="a", video=VideoClip(video, 0.5, 1.5), source=str(video))
    policy = SamplingPolicy("random", num_frames=4, clips=2)
    ds = SequenceDataset([sample, sample], ClipTransform(Preprocessing(16, 16)), sampling=policy)
    batch = collate([ds[0], ds[1]])
    batch.raise_errors()
    assert batch.lengths.tolist() == [4, 4, 4, 4] and batch.groups.tolist() == [0, 0, 1, 1]
    merged = batch.merge_clips(torch.tensor([[1.0], [3.0], [5.0], [7.0]]))
    assert merged.tolist() == [[2.0], [6.0]]


def _no_frames(path):
    """A container with a video stream and not one frame."""
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=10)
    stream.width = stream.height = 32
    stream.pix_fmt = "yuv420p"
    container.start_encoding()  # writes the header: the file exists, with no frame in it
    container.close()
    return path


def _write(path, data):
    path.write_bytes(data)
    return path


def _audio_only(path):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize(
    "make, start, end, message",
    [
        (lambda p: _write(p, b"not a video at all" * 10), None, None, "not a readable video"),
        (lambda p: _write(p, b""), None, None, "not a readable video"),
        (_audio_only, None, None, "no video stream.*audio"),
        (lambda p: write_video(p), 5.0, None, "start 5 s is outside the video"),
        (lambda p: write_video(p), 1.0, 0.5, "end 0.5 s is not after start"),
        (lambda p: write_video(p), 0.0, 9.0, "end 9 s is past the end"),
        (lambda p: _no_frames(p), None, None, "no streams at all"),
        (lambda p: _no_frames(p.with_suffix(".avi")), None, None, "has no frames"),
    ],
)
def test_bad_videos_name_the_file(tmp_path, make, start, end, message):
    path = make(tmp_path / "bad.mp4")
    with pytest.raises(BadFileError, match=message) as info:
        probe_video(path, start, end)
    assert "bad." in str(info.value)


def test_truncated_video_repeats_the_last_frame_and_says_so(tmp_path):
    import re

    # Matroska keeps its headers (and the full duration) at the front: a cut file still probes as 40
    # frames, and decoding runs out before the last one
    video = write_video(tmp_path / "v.mkv", frames=40, gop=4)
    data = video.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) * 2 // 3])
    info = probe_video(cut)
    assert info.num_frames == 40
    frames, notes = read_frames(cut, [0.0, info.frame_time(39)], fps=info.fps)
    assert len(frames) == 2 and len(notes) == 1
    ends = float(re.search(r"the video ends at ([\d.]+) s\); the last frame is repeated", notes[0]).group(1))
    assert ends < 3.9 and level(frames[1]) == round(ends * 10) % 32  # the last decodable frame, repeated


def test_an_mp4_cut_before_its_index_is_called_truncated(tmp_path):
    video = write_video(tmp_path / "v.mp4", frames=40, gop=4)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(video.read_bytes()[: video.stat().st_size * 2 // 3])
    with pytest.raises(BadFileError, match="cut.mp4: is truncated or damaged"):
        probe_video(cut)


def test_video_errors_in_the_dataset_name_the_sample(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"garbage" * 50)
    sample = Sample("clips/x", [], label="a", video=VideoClip(bad), source=str(bad))
    ds = SequenceDataset([sample], ClipTransform(Preprocessing(16, 16)))
    from seqvision.errors import DataError

    with pytest.raises(DataError, match=r"sample 'clips/x'.*broken.mp4"):
        collate([ds[0]]).raise_errors()


def test_folder_layout_takes_one_sample_per_video_file(tmp_path):
    from seqvision.data.discovery import discover

    for label in ("up", "down"):
        (tmp_path / label).mkdir()
        for n in range(2):
            write_video(tmp_path / label / f"v{n}.mp4")
    samples = discover(tmp_path)
    assert [s.id for s in samples] == ["down/v0.mp4", "down/v1.mp4", "up/v0.mp4", "up/v1.mp4"]
    assert all(s.video is not None and s.label in ("up", "down") for s in samples)


def test_manifest_clips_of_one_long_video_are_several_samples(tmp_path):
    from seqvision.data.discovery import discover
    from seqvision.errors import DataError

    write_video(tmp_path / "long.mp4", frames=40)
    (tmp_path / "m.csv").write_text(
        "sample_id,label,video,start,end\nc1,a,long.mp4,0,1\nc2,b,long.mp4,1,2.5\nc3,a,long.mp4,,\n"
    )
    samples = {s.id: s for s in discover(tmp_path / "m.csv")}
    assert samples["c2"].video == VideoClip(tmp_path / "long.mp4", 1.0, 2.5)
    assert samples["c3"].video.start is None
    ds = SequenceDataset(list(samples.values()), ClipTransform(Preprocessing(16, 16)))
    assert [len(ds[i]["clip"]) for i in range(3)] == [10, 15, 40]
    (tmp_path / "bad.csv").write_text("sample_id,label,path,start,end\nc1,a,long.mp4,2,1\n")
    with pytest.raises(DataError, match="line 2.*'end'.*after 'start'"):
        discover(tmp_path / "bad.csv")


def test_train_and_predict_on_videos(tmp_path):
    from seqvision.inference.predict import predict
    from seqvision.workflows import train_and_evaluate as train

    for label, gop in (("a", 4), ("b", 8)):
        (tmp_path / "data" / label).mkdir(parents=True)
        for n in range(3):
            write_video(tmp_path / "data" / label / f"v{n}.mp4", frames=12 + 2 * n, gop=gop)
    cfg = fast_config(tmp_path / "data", max_epochs=1)
    cfg.data.sampling, cfg.data.num_frames, cfg.data.eval_clips = "random", 4, 2
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.val_metrics["num_samples"] == 2
    rows, _ = predict(result.best_checkpoint, [tmp_path / "data" / "a" / "v0.mp4", tmp_path / "data" / "b"])
    assert [r["sample"].rsplit("/", 2)[-2:] for r in rows] == [["a", "v0.mp4"], ["b", "v0.mp4"], ["b", "v1.mp4"], ["b", "v2.mp4"]]


def test_unreadable_video_at_training_names_the_sample(tmp_path):
    from seqvision.errors import DataError
    from seqvision.workflows import train_and_evaluate as train

    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for n in range(2):
            write_video(tmp_path / "data" / label / f"v{n}.mp4")
    (tmp_path / "data" / "a" / "v1.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match=r"sample 'a/v1.mp4'.*v1.mp4.*not a readable video.*--on-bad-image skip"):
        train(fast_config(tmp_path / "data", max_epochs=1), tmp_path / "run", progress=False)
    cfg = fast_config(tmp_path / "data", max_epochs=1)
    cfg.data.on_bad_image = "skip"
    result = train(cfg, tmp_path / "run2", progress=False)
    assert any("a/v1.mp4" in r and "dropped" in r for r in result.reported)


def test_a_video_shorter_than_the_clip_uses_all_frames_and_says_so(tmp_path):
    video = write_video(tmp_path / "short.mp4", frames=5)
    sample = Sample("s", [], label="a", video=VideoClip(video), source=str(video))
    ds = SequenceDataset([sample], ClipTransform(Preprocessing(16, 16)), sampling=SamplingPolicy("random", num_frames=8), train=True)
    item = ds[0]
    assert len(item["clip"]) == 5
    assert any("5 frame(s), fewer than --num-frames 8: all used" in m for m in item["skipped"])


def test_report_thumbnails_read_each_video_once_in_the_asked_order(tmp_path, monkeypatch):
    import seqvision.data.video as video
    from seqvision.evaluation.evaluate import frame_images

    clip = write_video(tmp_path / "v.mp4", frames=20)
    calls = {"probe_video": 0, "read_frames": 0}

    def counted(name):
        real = getattr(video, name)

        def run(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        return run

    for name in calls:
        monkeypatch.setattr(video, name, counted(name))
    images = frame_images([f"{clip}@1.200s", str(tmp_path / "f.png"), f"{clip}@0.300s", f"{tmp_path / 'gone.mp4'}@0.100s"])
    assert calls == {"probe_video": 2, "read_frames": 1}  # v.mp4 once for both frames; gone.mp4 fails its probe
    assert [level(torch.from_numpy(images[i]).permute(2, 0, 1)) for i in (0, 2)] == [12, 3]
    assert images[1] == tmp_path / "f.png" and images[3] == tmp_path / "gone.mp4@0.100s"  # an unreadable video stays a path


def test_report_thumbnails_of_a_clip_with_a_start_show_its_own_frames(tmp_path):
    from seqvision.evaluation.evaluate import frame_images

    clip = write_video(tmp_path / "v.mp4", frames=30, fps=10)
    sample = Sample("late", [], label="a", video=VideoClip(clip, 1.0, 2.0), source=str(clip))  # frames 10-19
    ds = SequenceDataset([sample], ClipTransform(Preprocessing(16, 16)), sampling=SamplingPolicy("uniform", num_frames=3))
    names = ds[0]["frames"]
    assert names == [f"{clip}@1.000s", f"{clip}@1.400s", f"{clip}@1.900s"]
    images = frame_images(names)
    assert [level(torch.from_numpy(image).permute(2, 0, 1)) for image in images] == [10, 14, 19]


def test_headers_are_probed_once_per_file_version(tmp_path, monkeypatch):
    import seqvision.data.video as video

    clip = write_video(tmp_path / "p.mp4", frames=20)
    opened = []
    real_open = video._open
    monkeypatch.setattr(video, "_open", lambda path: opened.append(path) or real_open(path))
    first = probe_video(clip)
    assert probe_video(str(clip)) == first and len(opened) == 1  # filtering, planning, datasets: one read
    write_video(clip, frames=30)  # a new version of the file: read again
    assert probe_video(clip).num_frames == 30 and len(opened) == 2
