"""Streaming: one CNN forward and one head step per frame, equal to the model on the prefix (or the window);
the sources (video, folder, bad ones) and the ``seqvision stream`` command."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import fast_config, make_folder_dataset, write_image
from PIL import Image

from seqvision.cli import main
from seqvision.config import ModelConfig
from seqvision.data.discovery import discover
from seqvision.data.transforms import Preprocessing
from seqvision.errors import ConfigError, DataError
from seqvision.inference.predictor import Predictor, output_columns
from seqvision.streaming.run import run_stream, start_message
from seqvision.streaming.sources import FolderSource, open_source
from seqvision.streaming.stream import STREAM_COLUMNS, Stream
from seqvision.tasks import TargetSpec
from seqvision.workflows import train_and_evaluate as train


def write_video(path: Path, frames: int = 10, fps: int = 10, size: int = 32) -> Path:
    """A tiny mpeg4 clip whose frame i is a textured grey of level 20 * i."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.options = {"qscale": "2"}
        for i in range(frames):
            array = np.full((size, size, 3), (20 * i) % 256, np.uint8)
            array[::4, ::4] = 255 - array[::4, ::4]
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _frames(count: int = 8, seed: int = 0) -> list[torch.Tensor]:
    """Random (3, H, W) uint8 frames of a size other than the model's, so resizing and cropping run too."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8, generator=g) for _ in range(count)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A folder data root (one label per sample) and a manifest with one label per image."""
    root = tmp_path_factory.mktemp("stream")
    folder = make_folder_dataset(root / "folder", per_label=3, lengths=(4, 5, 6))
    rows = ["sample_id,path,index,label,frame_label"]
    for n in range(6):
        for t in range(4 + n % 2):
            value = 30 + 150 * (n % 2) + 10 * t
            write_image(root / "m" / f"s{n}_{t}.png", (value, 255 - value, 40 * t))
            rows.append(f"s{n},s{n}_{t}.png,{t},{'dark' if n % 2 else 'bright'},{'start' if t < 2 else 'later'}")
    (root / "m" / "m.csv").write_text("\n".join(rows) + "\n")
    return {"folder": folder, "manifest": root / "m" / "m.csv"}


def _predictor(data: dict[str, Path], *, per_image: bool, **model) -> Predictor:
    """A Predictor built directly (random weights, no training), fp32: the heads' exactness needs no training."""
    source = data["manifest"] if per_image else data["folder"]
    samples = discover(str(source))
    spec = TargetSpec.infer(samples, task="frame_classification" if per_image else "classification")
    cfg = fast_config(source)
    cfg.model = ModelConfig(backbone="tiny_cnn", weights="none", hidden_size=8, d_model=8, nhead=2, dropout=0.0, **model)
    torch.manual_seed(0)
    net = cfg.model.build_model(spec.num_outputs, per_step=spec.per_image)
    prep = Preprocessing(image_size=16, resize_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return Predictor(net, cfg=cfg, spec=spec, preprocessing=prep, precision="32")


def _reference(predictor: Predictor, frames: list[torch.Tensor], window: int | None) -> list[torch.Tensor]:
    """The model on each whole prefix (or its last ``window`` frames) at once, the CNN batched over all frames:
    the output at each frame, (K,) each."""
    stream = Stream(predictor)  # only its transform
    with torch.inference_mode():
        features = predictor.model.encoder(stream.transform(frames))  # (T, F)
        outputs = []
        for t in range(len(frames)):
            part = features[max(0, t + 1 - window) if window else 0 : t + 1]
            outputs.append(predictor.model.forward_features(part, torch.tensor([len(part)]))[-1])  # last image's row
    return outputs


def _count_cnn_calls(predictor: Predictor) -> list[int]:
    """Images per CNN forward, recorded by a hook on the encoder (fp32 on a CPU runs it as it is)."""
    calls: list[int] = []
    predictor.model.encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    return calls


EXACT = [  # (head, model options, kind): the whole prefix, one recurrent step or running statistic per frame
    *[(h, dict(num_layers=n, temporal_diff=d), "carried") for h in ("lstm", "gru") for n in (1, 2) for d in (False, True)],
    ("mean", {}, "running"), ("max", {}, "running"), ("mean", dict(temporal_diff=True), "running"),
    ("max", dict(temporal_diff=True), "running"),
    ("lstm", dict(readout="last", input_norm=False), "carried"),  # as checkpoints from before these options load
    ("gru", dict(readout="last", temporal_diff=True), "carried"),
]
WINDOWED = [  # (head, model options, window): the last N frames' kept features, run through the head every frame
    ("lstm", dict(bidirectional=True), 3), ("gru", dict(bidirectional=True, num_layers=2, temporal_diff=True), 3),
    ("attention", {}, 4), ("attention", dict(bidirectional=True, temporal_diff=True), 3), ("transformer", {}, 3),
    ("transformer", dict(temporal_diff=True), 5),
]


@pytest.mark.parametrize("per_image", [False, True], ids=["per-sample", "per-image"])
@pytest.mark.parametrize("head,options,kind", EXACT, ids=[f"{h}-{o}" for h, o, _ in EXACT])
def test_each_frame_equals_the_model_on_the_whole_prefix(data, per_image, head, options, kind):
    predictor = _predictor(data, per_image=per_image, head=head, **options)
    frames = _frames()
    want = _reference(predictor, frames, window=None)
    calls = _count_cnn_calls(predictor)
    stream = Stream(predictor)
    assert (stream.kind, stream.window) == (kind, None)
    for t, frame in enumerate(frames):
        row = stream.push(frame)
        assert row["frame"] == t and row["time"] is None
        torch.testing.assert_close(stream.last_output, want[t], atol=1e-5, rtol=0)
    assert calls == [1] * len(frames) and stream.cnn_calls == len(frames)


@pytest.mark.parametrize("per_image", [False, True], ids=["per-sample", "per-image"])
@pytest.mark.parametrize("head,options,window", WINDOWED, ids=[f"{h}-{o}" for h, o, _ in WINDOWED])
def test_window_heads_equal_the_model_on_the_last_frames_with_one_cnn_call_per_frame(data, per_image, head, options, window):
    predictor = _predictor(data, per_image=per_image, head=head, **options)
    predictor.cfg.data.num_frames = window  # the default window: the run's --num-frames
    frames = _frames(9)
    stream = Stream(predictor)
    if head == "attention" and per_image and not options.get("bidirectional"):
        assert stream.kind == "carried"  # per image, a unidirectional attention head is its LSTM: exact on the prefix
        want = _reference(predictor, frames, window=None)
    else:
        assert (stream.kind, stream.window) == ("window", window)
        want = _reference(predictor, frames, window=window)
    calls = _count_cnn_calls(predictor)
    for t, frame in enumerate(frames):
        stream.push(frame)
        torch.testing.assert_close(stream.last_output, want[t], atol=1e-5, rtol=0)
    assert calls == [1] * len(frames), "each frame's features are computed once and reused"


def test_an_explicit_window_applies_to_every_head_and_reset_starts_over(data):
    predictor = _predictor(data, per_image=False, head="lstm", num_layers=2)
    frames = _frames(7)
    stream = Stream(predictor, window=3)
    assert (stream.kind, stream.window) == ("window", 3)
    want = _reference(predictor, frames, window=3)
    for t, frame in enumerate(frames):
        stream.push(frame)
        torch.testing.assert_close(stream.last_output, want[t], atol=1e-5, rtol=0)
    stream.reset()
    assert (stream.frames, stream.cnn_calls) == (0, 0)
    stream.push(frames[3])
    torch.testing.assert_close(stream.last_output, _reference(predictor, frames[3:4], window=None)[0], atol=1e-5, rtol=0)


def test_push_takes_tensors_arrays_and_pil_images_alike_and_every_thins_the_rows(data):
    predictor = _predictor(data, per_image=False, head="gru")
    frames = _frames(5)
    outs = []
    for convert in (lambda f: f, lambda f: f.permute(1, 2, 0).numpy(), lambda f: Image.fromarray(f.permute(1, 2, 0).numpy())):
        stream = Stream(predictor, every=2)
        rows = [stream.push(convert(f), index=10 + i, time=i / 4) for i, f in enumerate(frames)]
        assert [r is not None for r in rows] == [True, False, True, False, True]
        outs.append(stream.last_output)
    assert all(torch.equal(outs[0], o) for o in outs)
    assert rows[2]["frame"] == 12 and rows[2]["time"] == 0.5
    assert set(rows[0]) == {"frame", "time", "prediction", "left", "right"}
    assert rows[0]["prediction"] in ("left", "right") and abs(rows[0]["left"] + rows[0]["right"] - 1) < 1e-5
    with pytest.raises(DataError, match=r"\(3, H, W\) uint8"):
        stream.push(torch.zeros(3, 8, 8))
    with pytest.raises(DataError, match="H x W x 3 uint8"):
        stream.push(np.zeros((8, 8), np.uint8))
    with pytest.raises(ConfigError, match="--every 0"):
        Stream(predictor, every=0)
    with pytest.raises(ConfigError, match="--window -1"):
        Stream(predictor, window=-1)


def test_the_start_message_names_the_step_and_the_frame_spacing_of_training(data):
    predictor = _predictor(data, per_image=False, head="transformer")
    predictor.cfg.data.sampling, predictor.cfg.data.fps, predictor.cfg.data.num_frames = "stride", 5.0, 8
    line = start_message(Stream(predictor), "cam.mp4", source_fps=30.0)
    assert "sliding window of the last 8 frames" in line and "--frame-step 6 matches training's 5 fps" in line
    assert "one frame in 3 (--frame-step 3)" in start_message(Stream(predictor, window=2), "x", frame_step=3)


def test_a_class_named_like_a_fixed_column_gets_a_prefix():
    assert output_columns(["frame", "time", "walk"], STREAM_COLUMNS) == ["p_frame", "p_time", "walk"]


# --------------------------------------------------------------------------- trained checkpoints, the CLI


@pytest.fixture(scope="module")
def checkpoints(data, tmp_path_factory) -> dict[str, Path]:
    """Two tiny trained checkpoints: a 2-layer LSTM with temporal differences (one label per sample) and a
    GRU labelling each image."""
    out = tmp_path_factory.mktemp("ckpt")
    cfg = fast_config(data["folder"], max_epochs=1, diagnostics="off")
    cfg.model.num_layers, cfg.model.temporal_diff = 2, True
    lstm = train(cfg, out / "lstm", progress=False).best_checkpoint
    cfg = fast_config(data["manifest"], max_epochs=1, diagnostics="off")
    cfg.data.task, cfg.model.head = "frame_classification", "gru"
    gru = train(cfg, out / "gru", progress=False).best_checkpoint
    return {"lstm": Path(lstm), "gru": Path(gru)}


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_a_loaded_checkpoint_streams_a_video_exactly(checkpoints, tmp_path, name):
    stream = Stream.load(checkpoints[name], precision="32")
    assert stream.kind == "carried"
    source = open_source(write_video(tmp_path / "v.mp4"))
    items = list(source)
    source.close()
    assert [i.index for i in items] == list(range(10)) and [i.time for i in items] == pytest.approx([t / 10 for t in range(10)])
    want = _reference(stream.predictor, [i.frame for i in items], window=None)
    for item, expected in zip(items, want):
        stream.push(item.frame, index=item.index, time=item.time)
        torch.testing.assert_close(stream.last_output, expected, atol=1e-5, rtol=0)


def test_a_1080p_video_streams_as_predict_decodes_it(checkpoints, tmp_path):
    """stream decodes a large video reduced, as predict does (FFmpeg scales it in the RGB conversion), so
    its output after the last frame is predict's output on the same frames."""
    from seqvision.inference.predict import predict

    video = tmp_path / "hd.mp4"
    g = np.random.default_rng(0)
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        stream.codec_context.options = {"qscale": "2"}
        for i in range(3):  # fine texture: a full decode resized after differs from FFmpeg's reduced decode
            array = np.repeat(np.repeat(g.integers(0, 256, (36, 64, 3), dtype=np.uint8), 30, 0), 30, 1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    rows, _ = predict(checkpoints["lstm"], [video], precision="32")
    out = tmp_path / "rows.jsonl"
    summary = run_stream(checkpoints["lstm"], video, out=out, precision="32")
    streamed = _lines(out.read_text())
    assert summary.frames == 3 and len(rows) == 1
    for name in ("left", "right"):
        assert streamed[-1][name] == pytest.approx(rows[0][name], abs=2e-6)  # both rounded to 6 decimals
    assert streamed[-1]["prediction"] == rows[0]["prediction"]


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_the_cli_prints_one_json_line_per_frame_of_a_video(checkpoints, tmp_path, capsys):
    video = str(write_video(tmp_path / "v.mp4"))
    assert main(["stream", str(checkpoints["lstm"]), video, "--precision", "32"]) == 0
    captured = capsys.readouterr()
    rows = _lines(captured.out)
    assert [r["frame"] for r in rows] == list(range(10)) and rows[3]["time"] == pytest.approx(0.3)
    assert set(rows[0]) == {"frame", "time", "prediction", "left", "right"}
    assert "carried" not in captured.out and "recurrent state carried" in captured.err  # logs on stderr only
    assert main(["stream", str(checkpoints["lstm"]), video, "--every", "2", "--precision", "32"]) == 0
    assert [r["frame"] for r in _lines(capsys.readouterr().out)] == [0, 2, 4, 6, 8]
    assert main(["stream", str(checkpoints["lstm"]), video, "--frame-step", "3", "--max-frames", "3", "--window", "2"]) == 0
    captured = capsys.readouterr()
    assert [r["frame"] for r in _lines(captured.out)] == [0, 3, 6] and "window of the last 2 frames" in captured.err


def test_the_cli_streams_a_folder_until_idle_to_a_jsonl_file(checkpoints, tmp_path, capsys):
    folder = tmp_path / "incoming"
    for name in ("f10.png", "f2.png", "f1.png", ".hidden.png"):
        write_image(folder / name, 90)
    (folder / "f3.png.part").write_bytes((folder / "f1.png").read_bytes()[:20])  # still being downloaded
    out = tmp_path / "preds" / "rows.jsonl"
    code = main(["stream", str(checkpoints["gru"]), str(folder), "--idle-timeout", "0.3", "--out", str(out), "--precision", "32"])
    assert code == 0
    assert capsys.readouterr().out == ""
    rows = _lines(out.read_text())
    assert [(r["frame"], r["image"]) for r in rows] == [(0, "f1.png"), (1, "f2.png"), (2, "f10.png")]
    assert rows[0]["time"] is None and rows[0]["prediction"] in ("start", "later")


def test_a_folder_source_waits_for_files_still_being_written(tmp_path):
    folder = tmp_path / "in"
    write_image(folder / "a1.png", 50)
    whole = (write_image(tmp_path / "big.png", 120, size=64)).read_bytes()
    ticks = []

    def sleep(seconds):  # the writer, between two polls: half of a2.png, then the rest
        ticks.append(seconds)
        if len(ticks) == 2:
            (folder / "a2.png").write_bytes(whole[: len(whole) // 2])
        if len(ticks) == 3:
            with open(folder / "a2.png", "ab") as fh:
                fh.write(whole[len(whole) // 2 :])

    source = FolderSource(folder, idle_timeout=1.0, poll_seconds=0.25, sleep=sleep, now=lambda: 0.25 * len(ticks))
    items = list(source)
    assert [i.image for i in items] == ["a1.png", "a2.png"] and items[1].frame.shape == (3, 64, 64)


def test_bad_sources_and_options_fail_on_one_line_before_loading(checkpoints, tmp_path, capsys):
    missing_ckpt = str(tmp_path / "nothing.ckpt")  # never reached: the source or the option fails first
    for source, words in [
        (str(tmp_path / "nope.mp4"), "no such file, folder or device"),
        (str(write_image(tmp_path / "one.png", 10)), "one image is not a stream"),
    ]:
        assert main(["stream", missing_ckpt, source]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and source in err and words in err
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    assert main(["stream", missing_ckpt, str(broken)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(broken) in err and "cannot be opened" in err
    url = "file://" + str(tmp_path / "gone.mp4")  # a URL: opened after loading the model
    assert main(["stream", str(checkpoints["lstm"]), url]) == 1
    assert url in capsys.readouterr().err.splitlines()[-1]
    for flags, words in [(["--every", "0"], "--every"), (["--window", "x"], "--window"), (["--frame-step", "-2"], "--frame-step")]:
        assert main(["stream", missing_ckpt, str(tmp_path), *flags]) == 2
        assert words in capsys.readouterr().err
    assert main(["stream", missing_ckpt, str(tmp_path), "--idle-timeout", "-1"]) == 1
    assert "--idle-timeout -1" in capsys.readouterr().err
    assert main(["stream", missing_ckpt, str(tmp_path), "--precision", "16", "--device", "cuda:7"]) == 2  # argparse choices


def test_ctrl_c_ends_the_stream_cleanly_keeping_the_lines_written(checkpoints, tmp_path, monkeypatch):
    video = write_video(tmp_path / "v.mp4")
    push = Stream.push

    def interrupting(self, frame, **kw):
        if self.frames == 4:
            raise KeyboardInterrupt
        return push(self, frame, **kw)

    monkeypatch.setattr(Stream, "push", interrupting)
    out = tmp_path / "rows.jsonl"
    summary = run_stream(checkpoints["lstm"], video, out=out, precision="32")
    assert summary.interrupted and (summary.frames, summary.rows, summary.cnn_calls) == (4, 4, 4)
    assert [r["frame"] for r in _lines(out.read_text())] == [0, 1, 2, 3]


def test_streaming_loads_without_lightning():
    import subprocess
    import sys

    code = ("import sys; import seqvision.streaming.run, seqvision.streaming.stream, seqvision.streaming.sources; "
            "print([m for m in sys.modules if m == 'lightning' or m.startswith('lightning.')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
