"""seqvision export of models trained with --temporal-shift: the whole graph shifts along T within each padded
sample (equal to each sample alone through the live model), and a causal shift's stream graph, run frame by
frame with its carried slices and head state fed back, equals the offline model on every prefix and the live
stream. A bidirectional shift has no stream graph, and model.json says why."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

from test_export import LENGTHS, alone, make_predictor, padded_batch, real_rows
from seqvision.export.exporter import export_predictor
from seqvision.models.temporal_shift import FrameLayout, shift_frames

BACKBONES = [("tiny_cnn", 16, None), ("resnet18", 32, 2)]  # resnet18: random weights, its last 2 stages shifted


def offline_prefixes(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``images (T, 3, S, S)`` -> ``(T, K)``: row t is the live model on frames 0..t at once (per image: row t of it)."""
    with torch.no_grad():
        return torch.stack([model(images[: t + 1], torch.tensor([t + 1]))[-1] for t in range(len(images))])


def shifted_predictor(mode: str, *, backbone: str = "tiny_cnn", size: int = 16, stages: int | None = None, head: str = "lstm",
                      **options):
    return make_predictor(head, backbone=backbone, size=size, temporal_shift=mode, trainable_stages=stages, **options)


@pytest.mark.parametrize("mode", ["bidirectional", "causal"])
def test_the_padded_shift_is_each_samples_own_shift_whatever_the_padding_holds(mode):
    from seqvision.models.temporal_shift import shift_padded

    lengths = torch.tensor([3, 1, 4, 2])
    x = torch.randn(int(lengths.sum()), 16, 3, 3, generator=torch.Generator().manual_seed(0))
    real = torch.arange(4)[None, :] < lengths[:, None]  # (B, T)
    padded = nn.utils.rnn.pad_sequence(x.split(lengths.tolist()), batch_first=True)  # (B, T, C, H, W)
    padded[~real] = 7.0  # what a CNN leaves in padded frames is not zero: it must never be read
    got = shift_padded(padded.flatten(0, 1), real, mode).unflatten(0, (4, 4))[real]  # real frames, sample after sample
    assert torch.equal(got, shift_frames(x, FrameLayout.of(lengths), mode))


# every mode on tiny_cnn; resnet18 (whose export and check take ~30-60 s on 2 cores) in the mode that reads
# both neighbours: the causal shift is the same code with one side left out
WHOLE_GRAPH_CASES = [(*BACKBONES[0], "bidirectional"), (*BACKBONES[0], "causal"), (*BACKBONES[1], "bidirectional")]


@pytest.mark.parametrize("backbone,size,stages,mode", WHOLE_GRAPH_CASES, ids=[f"{b}-{m}" for b, _, _, m in WHOLE_GRAPH_CASES])
def test_the_whole_graph_with_a_shift_equals_each_sample_alone_in_a_batch_of_mixed_lengths(tmp_path, backbone, size, stages, mode):
    predictor = shifted_predictor(mode, backbone=backbone, size=size, stages=stages)
    flat, padded = padded_batch(predictor, LENGTHS)
    expected = alone(predictor, flat, LENGTHS)  # the live shifted model on each sample alone
    unshifted = alone(make_predictor("lstm", backbone=backbone, size=size, trainable_stages=stages), flat, LENGTHS)
    assert (expected - unshifted).abs().max() > 1e-3  # the shift changes the outputs (same weights): it is tested
    lengths = torch.tensor(LENGTHS)
    result = export_predictor(predictor, tmp_path / "onnx", format="onnx")
    assert max(result.max_diff.values()) <= 1e-4
    logits, probabilities = onnxruntime.InferenceSession(str(result.files["model"])).run(
        None, {"images": padded.numpy(), "lengths": lengths.numpy()})
    assert torch.allclose(torch.from_numpy(logits), expected, atol=1e-4)
    assert torch.allclose(torch.from_numpy(probabilities), expected.softmax(-1), atol=1e-4)
    # the two halves: the encoder takes whole padded samples, its features feed the sequence graph unchanged
    features = onnxruntime.InferenceSession(str(result.files["encoder"])).run(None, {"images": padded.numpy(), "lengths": lengths.numpy()})[0]
    assert features.shape[:2] == (len(LENGTHS), max(LENGTHS)) and np.all(features[1, 1:] == 0)  # padding rows: 0
    halves = onnxruntime.InferenceSession(str(result.files["sequence"])).run(None, {"features": features, "lengths": lengths.numpy()})[0]
    assert torch.allclose(torch.from_numpy(halves), expected, atol=1e-4)
    if backbone != "tiny_cnn":
        return  # TorchScript traces the same modules: one backbone is enough (resnet18's export takes ~30 s on 2 cores)
    script = export_predictor(predictor, tmp_path / "ts", format="torchscript")
    with torch.no_grad():
        traced = torch.jit.load(str(script.files["model"]))(padded, lengths)[0]
    assert torch.allclose(traced, expected, atol=1e-4)


def test_a_per_image_task_with_a_shift_exports_its_rows(tmp_path):
    predictor = shifted_predictor("bidirectional", task="frame_classification", temporal_diff=True)
    flat, padded = padded_batch(predictor, LENGTHS)
    result = export_predictor(predictor, tmp_path / "x")
    logits = onnxruntime.InferenceSession(str(result.files["model"])).run(
        None, {"images": padded.numpy(), "lengths": np.array(LENGTHS)})[0]
    assert torch.allclose(real_rows(logits, LENGTHS), alone(predictor, flat, LENGTHS), atol=1e-4)


def run_stream_graph(path, images: torch.Tensor, *, restart: dict[int, int] | None = None) -> list[np.ndarray]:
    """The exported ONNX stream graph on ``images (B, T, 3, S, S)``, one frame per call, every ``*_out`` fed back
    as its ``*_in`` (zeros at the start; ``restart {b: t}``: sample b's state zeroed before frame t). The first
    output after each frame, ``(B, K)``."""
    session = onnxruntime.InferenceSession(str(path))
    inputs = [i for i in session.get_inputs() if i.name != "image"]
    names = [o.name for o in session.get_outputs()]
    batch = images.shape[0]
    state = {i.name: np.zeros([batch if isinstance(d, str) else d for d in i.shape], np.float32) for i in inputs}
    got = []
    for t in range(images.shape[1]):
        for b, when in (restart or {}).items():
            if when == t:
                for name, value in state.items():  # the recurrent h / c hold the batch in their dimension 1
                    (value[:, b] if name.split("_")[0] in ("h", "c") else value[b])[...] = 0
        out = dict(zip(names, session.run(None, {"image": images[:, t].numpy(), **state})))
        state = {name: out[name.replace("_in", "_out", 1)] for name in state}
        got.append(out[names[0]])
    return got


STREAM_HEADS = [
    ("lstm", {}),  # first+last readout: the first frame's output is carried
    ("lstm", {"temporal_diff": True, "num_layers": 2}),  # the previous frame's features are carried
    ("gru", {"readout": "last", "input_norm": False}),
    ("mean", {"temporal_diff": True}),
    ("max", {}),
]


@pytest.mark.parametrize("head,options", STREAM_HEADS, ids=[f"{h}-{'-'.join(o) or 'default'}" for h, o in STREAM_HEADS])
def test_the_causal_stream_graph_frame_by_frame_equals_the_offline_model_on_every_prefix(tmp_path, head, options):
    predictor = shifted_predictor("causal", head=head, **options)
    result = export_predictor(predictor, tmp_path / "x")
    meta = json.loads((tmp_path / "x" / "model.json").read_text())
    assert meta["files"]["stream"] == "stream.onnx" and meta["checked"]["max_abs_diff"]["stream"] <= 1e-4
    session = onnxruntime.InferenceSession(str(result.files["stream"]))
    assert [i.name for i in session.get_inputs()] == list(meta["graphs"]["stream"]["inputs"])  # documented, in order
    assert [o.name for o in session.get_outputs()] == list(meta["graphs"]["stream"]["outputs"])
    assert "shift_in_0" in meta["graphs"]["stream"]["inputs"]
    images = torch.randn(3, 6, 3, 16, 16, generator=torch.Generator().manual_seed(7))  # 3 sequences of 6 frames
    got = run_stream_graph(result.files["stream"], images, restart={2: 3})  # sequence 2 starts again at frame 3
    for b in range(3):
        offline = offline_prefixes(predictor.model, images[b])  # (T, K): the whole model on frames 0..t
        if b == 2:
            offline = torch.cat([offline[:3], offline_prefixes(predictor.model, images[b, 3:])])
        for t in range(6):
            assert torch.allclose(torch.from_numpy(got[t][b]), offline[t], atol=1e-4), (b, t)


def test_the_stream_graph_equals_the_live_stream_and_keeps_a_per_image_task(tmp_path):
    from seqvision.streaming.stream import Stream

    predictor = shifted_predictor("causal", task="frame_classification", head="attention", num_layers=2)
    result = export_predictor(predictor, tmp_path / "x")
    stream = Stream(predictor)
    assert stream.kind == "carried"
    frames = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    images = torch.cat([stream.transform([f]) for f in frames])  # (5, 3, 16, 16), as the stream feeds its CNN
    live = []
    for f in frames:
        stream.push(f)
        live.append(stream.last_output)
    got = run_stream_graph(result.files["stream"], images[None])
    offline = offline_prefixes(predictor.model, images)  # per image: row t is the output at frame t of frames 0..t
    for t in range(5):
        assert torch.allclose(torch.from_numpy(got[t][0]), live[t], atol=1e-4), t
        assert torch.allclose(torch.from_numpy(got[t][0]), offline[t], atol=1e-4), t


def test_a_bidirectional_shift_or_a_window_head_has_no_stream_graph_and_model_json_says_why(tmp_path):
    export_predictor(shifted_predictor("bidirectional"), tmp_path / "bi")
    meta = json.loads((tmp_path / "bi" / "model.json").read_text())
    assert sorted(meta["files"]) == ["encoder", "model", "sequence"] and "stream" not in meta["graphs"]
    assert meta["temporal_shift"] == "bidirectional" and "reads the next frame" in meta["not_exported"]["stream"]
    assert meta["graphs"]["encoder"]["inputs"] == {"images": "(B, T, 3, S, S) float32, zero-padded", "lengths": "(B,) int64"}
    export_predictor(shifted_predictor("causal", head="transformer"), tmp_path / "tr")
    meta = json.loads((tmp_path / "tr" / "model.json").read_text())
    assert "stream" not in meta["files"] and "reads a window of frames" in meta["not_exported"]["stream"]
    # a model without a shift: the model.json it always had (no shift keys, no stream graph)
    export_predictor(make_predictor("lstm"), tmp_path / "plain")
    meta = json.loads((tmp_path / "plain" / "model.json").read_text())
    assert "temporal_shift" not in meta and sorted(meta["files"]) == ["encoder", "model", "sequence"]
    assert meta["graphs"]["encoder"]["inputs"] == {"images": "(N, 3, S, S) float32"}


def test_a_stream_graph_that_differs_from_the_offline_model_is_refused(tmp_path, monkeypatch):
    import seqvision.export.exporter as exporter
    import seqvision.models.temporal_shift as temporal_shift

    real = temporal_shift.ShiftedConv2d._streamed

    def forgetful(self, x):  # a stream that reads zeros for the previous frame: the first frame agrees, later ones not
        carried = self.shift_state.carried
        if id(self) in carried:
            carried[id(self)] = carried[id(self)] * 0
        return real(self, x)

    monkeypatch.setattr(temporal_shift.ShiftedConv2d, "_streamed", forgetful)
    with pytest.raises(exporter.ExportError, match="stream graph .* differs from the whole model on a prefix"):
        export_predictor(shifted_predictor("causal"), tmp_path / "x", format="torchscript")
    assert not (tmp_path / "x" / "model.json").exists()
