"""The recurrent heads' input projection (LayerNorm + Linear per step, ``input_norm``) and first+last readout:
built by default, carried through streaming, and checkpoints written before they existed load as they were."""

from __future__ import annotations

import torch
from torch import nn

from conftest import fast_config, make_folder_dataset
from seqvision.data.discovery import discover
from seqvision.inference.predictor import Predictor
from seqvision.models.checkpoint import read_checkpoint
from seqvision.models.temporal import build_temporal_head
from seqvision.streaming.state import head_step
from seqvision.workflows import train_and_evaluate


def test_recurrent_heads_read_each_step_through_layernorm_and_a_projection_by_default():
    for name in ("lstm", "gru", "attention"):
        head = build_temporal_head(name, 40, hidden_size=8)
        rnn_head = head.rnn if name == "attention" else head
        assert isinstance(rnn_head.input[0], nn.LayerNorm) and rnn_head.input[1].out_features == 8
        assert rnn_head.rnn.input_size == 8
        raw = build_temporal_head(name, 40, hidden_size=8, input_norm=False)
        assert (raw.rnn if name == "attention" else raw).rnn.input_size == 40


def test_the_projection_is_scale_free_and_streams_like_the_offline_head():
    torch.manual_seed(0)
    head = build_temporal_head("lstm", 12, hidden_size=6).eval()
    x = torch.rand(2, 5, 12) * 6  # non-negative, like pooled ReLU features
    lengths = torch.tensor([5, 3])
    with torch.no_grad():
        # LayerNorm per step: a feature vector scaled by a constant gives the same state
        assert torch.allclose(head(x, lengths), head(100 * x, lengths), atol=1e-4)
        step = head_step(head, per_step=False)
        outs = [step.step(x[0, t]) for t in range(5)]
        assert torch.allclose(outs[-1], head(x[:1], lengths[:1]), atol=1e-5)
    raw = build_temporal_head("lstm", 12, hidden_size=6, input_norm=False).eval()
    with torch.no_grad():
        assert not torch.allclose(raw(x, lengths), raw(100 * x, lengths), atol=1e-2)


def test_a_checkpoint_from_before_the_projection_loads_and_predicts_as_it_did(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_label=3)
    cfg = fast_config(data, max_epochs=1)
    cfg.model.input_norm, cfg.model.readout = False, "last"  # the model an older seqvision trained
    cfg.train.diagnostics = "fast"
    result = train_and_evaluate(cfg, tmp_path / "run", progress=False)
    want = Predictor.load(result.best_checkpoint, precision="32").run(discover(str(data))).outputs
    raw = read_checkpoint(result.best_checkpoint)
    del raw["seqvision"]["config"]["model"]["input_norm"]  # as written before the options existed
    del raw["seqvision"]["config"]["model"]["readout"]
    old = tmp_path / "old.ckpt"
    torch.save(raw, old)
    predictor = Predictor.load(old, precision="32")
    assert predictor.cfg.model.input_norm is False and predictor.cfg.model.readout == "last"
    assert isinstance(predictor.model.temporal_head.input, nn.Identity)
    assert torch.allclose(predictor.run(discover(str(data))).outputs, want)


def test_the_first_last_readout_is_the_outputs_at_each_samples_first_and_last_real_step():
    torch.manual_seed(0)
    head = build_temporal_head("lstm", 12, hidden_size=6).eval()
    x = torch.rand(2, 5, 12)
    lengths = torch.tensor([5, 3])
    with torch.no_grad():
        pooled, steps = head(x, lengths), head(x, lengths, per_step=True)
        alone = head.rnn(head.input(x[1:, :3]))[0]  # (1, 3, 6): the second sample's outputs, unpadded
    assert pooled.shape == (2, 12) and steps.shape == (2, 5, 12)
    assert torch.allclose(pooled[1], torch.cat([alone[0, 2], alone[0, 0]]), atol=1e-6)
    assert torch.allclose(steps[1, 2], pooled[1], atol=1e-6)  # per step at the last real step = pooled
    step = head_step(head, per_step=True)
    streamed = torch.cat([step.step(x[1, t]) for t in range(3)])
    assert torch.allclose(streamed, steps[1, :3], atol=1e-5)


def test_a_run_started_before_the_options_resumes_as_the_model_it_holds(tmp_path, caplog):
    data = make_folder_dataset(tmp_path / "data", per_label=3)
    cfg = fast_config(data, max_epochs=1)
    cfg.model.input_norm, cfg.model.readout = False, "last"  # an older seqvision's model
    cfg.train.diagnostics = "off"
    train_and_evaluate(cfg, tmp_path / "run", progress=False)
    last = tmp_path / "run" / "last.ckpt"
    raw = torch.load(last, weights_only=True)
    for key in ("input_norm", "readout"):  # as that seqvision wrote it
        del raw["seqvision"]["config"]["model"][key]
    torch.save(raw, last)
    again = fast_config(data, max_epochs=2)  # today's defaults: another model, unless the resume keeps the old
    again.train.diagnostics = "off"
    with caplog.at_level("WARNING", logger="seqvision"):
        result = train_and_evaluate(again, tmp_path / "run", resume=True, progress=False)
    assert again.model.input_norm is False and again.model.readout == "last"
    assert any("--no-input-norm" in r.getMessage() and "--readout last" in r.getMessage() for r in caplog.records)
    assert Predictor.load(result.best_checkpoint, precision="32").cfg.model.readout == "last"
