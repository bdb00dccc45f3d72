"""seqvision export: ONNX and TorchScript graphs equal PyTorch on padded batches of several lengths, for
every head; model.json says how to feed them; failures are clear and leave nothing behind."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

from conftest import fast_config
from seqvision.cli import main
from seqvision.config import ModelConfig, RunConfig
from seqvision.data.transforms import Preprocessing
from seqvision.errors import ConfigError
from seqvision.export.exporter import ExportError, check_graph, export_predictor
from seqvision.export.heads import reverse_within_lengths
from seqvision.inference.predictor import Predictor
from seqvision.tasks import TargetSpec
from seqvision.workflows import train_and_evaluate

HEADS = [
    ("lstm", {}),
    ("lstm", {"readout": "last", "input_norm": False}),  # as checkpoints from before these options load
    ("lstm", {"bidirectional": True, "readout": "last"}),
    ("gru", {"num_layers": 2}),
    ("lstm", {"bidirectional": True, "num_layers": 2}),
    ("attention", {"bidirectional": True}),
    ("transformer", {"num_layers": 2}),
    ("mean", {}),
    ("max", {}),
]
LENGTHS = [5, 1, 3, 2]  # one padded batch of several lengths, a one-image sample among them


def make_predictor(head: str, *, task: str = "classification", temporal_diff: bool = False, backbone: str = "tiny_cnn",
                   size: int = 16, **options) -> Predictor:
    """A Predictor around a freshly built (untrained, seeded) model: every head without training one."""
    torch.manual_seed(0)
    names = ["a", "b", "c"]
    spec = TargetSpec(task, class_names=names) if task != "regression" else TargetSpec(task, target_names=["x", "y"])
    mc = ModelConfig(backbone=backbone, weights="none", head=head, temporal_diff=temporal_diff, hidden_size=6,
                     d_model=8, nhead=2, dropout=0.0, **options)
    model = mc.build_model(spec.num_outputs, per_step=spec.per_image)
    prep = Preprocessing(image_size=size, resize_size=size)
    cfg = RunConfig(model=mc)
    return Predictor(model, cfg=cfg, spec=spec, preprocessing=prep, precision="32")


def padded_batch(predictor: Predictor, lengths: list[int], seed: int = 1):
    """Random normalized images of samples of ``lengths``: flat (N, 3, S, S) and padded (B, T, 3, S, S)."""
    size = predictor.preprocessing.image_size
    flat = torch.randn(sum(lengths), 3, size, size, generator=torch.Generator().manual_seed(seed))
    padded = nn.utils.rnn.pad_sequence(flat.split(lengths), batch_first=True)
    return flat, padded


def alone(predictor: Predictor, flat: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """The live PyTorch model on each sample alone: (B, K), or the real rows (N, K) of a per-image task."""
    with torch.no_grad():
        return torch.cat([predictor.model(x, torch.tensor([n])) for x, n in zip(flat.split(lengths), lengths)])


def real_rows(out: np.ndarray, lengths: list[int]) -> torch.Tensor:
    out = torch.from_numpy(out) if isinstance(out, np.ndarray) else out
    return torch.cat([out[b, :n] for b, n in enumerate(lengths)]) if out.dim() == 3 else out


@pytest.mark.parametrize("head,options", HEADS, ids=[f"{h}{'-' + '-'.join(f'{k}{v}' for k, v in o.items()) if o else ''}" for h, o in HEADS])
@pytest.mark.parametrize("task", ["classification", "frame_classification"])
def test_onnx_and_torchscript_equal_pytorch_on_a_padded_batch_for_every_head(tmp_path, head, options, task):
    predictor = make_predictor(head, task=task, temporal_diff=head in ("lstm", "transformer"), **options)
    flat, padded = padded_batch(predictor, LENGTHS)
    expected = alone(predictor, flat, LENGTHS)  # each sample alone: the exported batch must be padding-invariant
    lengths = torch.tensor(LENGTHS)
    onnx = export_predictor(predictor, tmp_path / "onnx", format="onnx")
    session = onnxruntime.InferenceSession(str(onnx.files["model"]))
    logits, probabilities = session.run(None, {"images": padded.numpy(), "lengths": lengths.numpy()})
    assert torch.allclose(real_rows(logits, LENGTHS), expected, atol=1e-4)
    assert torch.allclose(real_rows(probabilities, LENGTHS), expected.softmax(-1), atol=1e-4)
    if task == "frame_classification":  # padded rows are 0, not leftovers
        assert np.all(logits[1, 1:] == 0) and np.all(probabilities[1, 1:] == 0)
    # the two halves: the encoder on real images only, the sequence part on padded features
    features = onnxruntime.InferenceSession(str(onnx.files["encoder"])).run(None, {"images": flat.numpy()})[0]
    padded_features = nn.utils.rnn.pad_sequence(torch.from_numpy(features).split(LENGTHS), batch_first=True)
    sequence = onnxruntime.InferenceSession(str(onnx.files["sequence"]))
    halves = sequence.run(None, {"features": padded_features.numpy(), "lengths": lengths.numpy()})[0]
    assert torch.allclose(real_rows(halves, LENGTHS), expected, atol=1e-4)
    script = export_predictor(predictor, tmp_path / "ts", format="torchscript")
    traced = torch.jit.load(str(script.files["model"]))
    with torch.no_grad():
        ts_logits = traced(padded, lengths)[0]
    assert torch.allclose(real_rows(ts_logits, LENGTHS), expected, atol=1e-4)


def test_reversing_within_lengths_keeps_padding_in_place_and_undoes_itself():
    x = torch.arange(8.0).view(2, 4, 1)
    lengths = torch.tensor([4, 2])
    out = reverse_within_lengths(x, lengths)
    assert out[:, :, 0].tolist() == [[3, 2, 1, 0], [5, 4, 6, 7]]
    assert torch.equal(reverse_within_lengths(out, lengths), x)


def test_regression_and_multilabel_outputs_and_a_real_backbone(tmp_path):
    predictor = make_predictor("lstm", task="regression")
    result = export_predictor(predictor, tmp_path / "reg")
    assert json.loads((tmp_path / "reg" / "model.json").read_text())["graphs"]["model"]["outputs"] == {"values": "(B, K)"}
    assert max(result.max_diff.values()) <= 1e-4
    # a torchvision CNN (BatchNorm, depthwise convolutions) at a small size, multi-label: sigmoid outputs
    predictor = make_predictor("gru", task="multilabel", backbone="mobilenet_v2", size=32)
    flat, padded = padded_batch(predictor, [3, 1])
    result = export_predictor(predictor, tmp_path / "ml")
    session = onnxruntime.InferenceSession(str(result.files["model"]))
    logits, probabilities = session.run(None, {"images": padded.numpy(), "lengths": np.array([3, 1])})
    expected = alone(predictor, flat, [3, 1])
    assert torch.allclose(torch.from_numpy(logits), expected, atol=1e-4)
    assert torch.allclose(torch.from_numpy(probabilities), expected.sigmoid(), atol=1e-4)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from conftest import make_folder_dataset

    root = tmp_path_factory.mktemp("export")
    data = make_folder_dataset(root / "data")
    return train_and_evaluate(fast_config(data), root / "run", progress=False).best_checkpoint


def test_cli_writes_the_graphs_and_model_json(checkpoint, tmp_path, capsys):
    assert main(["export", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "x")]) == 0
    out = capsys.readouterr().out
    assert out.count("max |onnx - PyTorch|") == 3 and "model.json" in out
    meta = json.loads((tmp_path / "x" / "model.json").read_text())
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["encoder.onnx", "model.json", "model.onnx", "sequence.onnx"]
    assert meta["names"] == ["left", "right"] and meta["task"] == "classification" and meta["per_image"] is False
    assert meta["preprocessing"]["image_size"] == 16 and meta["preprocessing"]["interpolation"] == "bilinear"
    assert len(meta["preprocessing"]["mean"]) == 3 and meta["model"]["head"] == "lstm"
    assert meta["checked"]["max_abs_diff"]["model"] <= 1e-4 and meta["sampling"]["sampling"] == "uniform"
    # the graph predicts what `seqvision predict` predicts on the same sample folder
    predictor = Predictor.load(checkpoint, precision="32")
    from seqvision.data.discovery import discover_inputs

    sample = discover_inputs([str(checkpoint.parents[1] / "data" / "right" / "s2")])
    row = predictor.rows(predictor.run(sample))[0]
    item = predictor.dataset(sample)[0]
    session = onnxruntime.InferenceSession(str(tmp_path / "x" / "model.onnx"))
    probabilities = session.run(None, {"images": item["clip"][None].numpy(), "lengths": np.array([len(item["clip"])])})[1]
    assert probabilities[0] == pytest.approx([row["left"], row["right"]], abs=1e-4)


def test_cli_refuses_bad_options_before_loading(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x")]) == 1
    assert "missing.ckpt" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.ckpt"), "--format", "onnx", "--opset", "9", "--out", str(tmp_path / "x")]) == 1
    assert "--opset 9" in capsys.readouterr().err
    assert main(["export", "x.ckpt", "--format", "tflite", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_a_head_without_an_export_form_is_refused_by_name(tmp_path):
    class Custom(nn.Module):
        output_size = 8

        def forward(self, features, lengths, per_step=False):
            return features.mean(1)[:, :8]

    predictor = make_predictor("lstm")
    predictor.model.temporal_head = Custom()
    with pytest.raises(ConfigError, match="'lstm' \\(Custom\\) has no export form"):
        export_predictor(predictor, tmp_path / "x")


def test_a_graph_that_differs_from_pytorch_is_refused_and_keeps_the_previous_export(tmp_path, monkeypatch):
    predictor = make_predictor("lstm")
    export_predictor(predictor, tmp_path / "x")
    before = {p.name: p.read_bytes() for p in (tmp_path / "x").iterdir()}
    import seqvision.export.exporter as exporter

    real = exporter.run_graph
    monkeypatch.setattr(exporter, "run_graph", lambda *a: [o + 1e-3 for o in real(*a)])  # a graph 1e-3 off
    with pytest.raises(ExportError, match="differs from PyTorch by 1.0.e-03"):
        export_predictor(make_predictor("gru"), tmp_path / "x")
    assert {p.name: p.read_bytes() for p in (tmp_path / "x").iterdir()} == before  # nothing replaced, no temp left


def test_check_graph_runs_the_saved_file(tmp_path):
    predictor = make_predictor("mean")
    result = export_predictor(predictor, tmp_path / "x", format="torchscript")
    assert check_graph(result.files["sequence"], "sequence", predictor, "torchscript") <= 1e-5
