"""The temporal shift (--temporal-shift): per-sample boundaries in a packed CNN batch, the causal form reads
only the past, the backbone's weights and frozen maps are unchanged, chunks keep whole samples, and a run
trains (live and on cached maps), predicts from its checkpoint, and is refused where it cannot run yet."""

from __future__ import annotations

import pytest
import torch

from conftest import fast_config, make_folder_dataset
from seqvision.data.discovery import discover
from seqvision.errors import ConfigError
from seqvision.inference.predictor import Predictor
from seqvision.models.backbones import build_backbone
from seqvision.models.sequence_model import build_sequence_model
from seqvision.models.temporal_shift import FOLD_DIV, FrameLayout, frames_of, shift_frames
from seqvision.workflows import train_and_evaluate


def shift_one_sample(x: torch.Tensor, mode: str) -> torch.Tensor:
    """The shift of ONE sample's frames ``(T, C, H, W)``, written out frame by frame (the reference)."""
    fold = x.shape[1] // FOLD_DIV
    out = x.clone()
    for t in range(x.shape[0]):
        out[t, :fold] = x[t - 1, :fold] if t > 0 else 0
        if mode == "bidirectional":
            out[t, fold : 2 * fold] = x[t + 1, fold : 2 * fold] if t + 1 < x.shape[0] else 0
    return out


@pytest.mark.parametrize("mode", ["bidirectional", "causal"])
def test_the_shift_of_a_packed_batch_is_each_samples_own_shift(mode):
    lengths = torch.tensor([3, 1, 4, 2])
    x = torch.randn(int(lengths.sum()), 16, 3, 3, generator=torch.Generator().manual_seed(0))
    got = shift_frames(x, FrameLayout.of(lengths), mode)
    want = torch.cat([shift_one_sample(part, mode) for part in x.split(lengths.tolist())])
    assert torch.equal(got, want)
    assert not torch.equal(got, x)
    untouched = 2 * (16 // FOLD_DIV) if mode == "bidirectional" else 16 // FOLD_DIV
    assert torch.equal(got[:, untouched:], x[:, untouched:])


def shifted_model(backbone: str, mode: str, *, trainable_stages=None, chunk_size=None, seed=0):
    torch.manual_seed(seed)
    return build_sequence_model(
        2, backbone=backbone, weights="none", head="lstm", hidden_size=8, dropout=0.0, temporal_shift=mode,
        trainable_stages=trainable_stages, chunk_size=chunk_size,
    ).eval()


@pytest.mark.parametrize("backbone,size,stages", [("tiny_cnn", 16, None), ("resnet18", 32, 2), ("mobilenet_v2", 32, 4)])
@pytest.mark.parametrize("mode", ["bidirectional", "causal"])
def test_a_sample_gives_the_same_output_alone_and_packed_with_others(backbone, size, stages, mode):
    model = shifted_model(backbone, mode, trainable_stages=stages)
    lengths = torch.tensor([3, 1, 4])
    images = torch.randn(int(lengths.sum()), 3, size, size, generator=torch.Generator().manual_seed(1))

    def features(net, images, lengths):  # (N, F)
        with torch.no_grad(), frames_of(net.encoder, lengths):
            return net.encoder(images)

    packed = features(model, images, lengths)
    scale = packed.abs().max()  # random MobileNetV2 features are ~1e-9: compare relative to their size
    alone = torch.cat([features(model, part, torch.tensor([len(part)])) for part in images.split(lengths.tolist())])
    unshifted = features(shifted_model(backbone, "off", trainable_stages=stages), images, lengths)
    assert torch.allclose(packed / scale, alone / scale, atol=1e-5)
    assert ((packed - unshifted) / scale).abs().max() > 1e-3  # the shift is really there (same weights, seed 0)
    with torch.no_grad():  # and the whole model, batch against one by one
        out = model(images, lengths)
        one = torch.cat([model(part, torch.tensor([len(part)])) for part in images.split(lengths.tolist())])
    assert torch.allclose(out, one, atol=1e-5)


@pytest.mark.parametrize("backbone,size,stages", [("tiny_cnn", 16, None), ("resnet18", 32, 2)])
def test_the_causal_shift_never_reads_a_later_frame(backbone, size, stages):
    model = shifted_model(backbone, "causal", trainable_stages=stages)
    images = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(2))
    changed = images.clone()
    changed[3:] = torch.randn(2, 3, size, size)
    with torch.no_grad(), frames_of(model.encoder, torch.tensor([5])):
        before, after = model.encoder(images), model.encoder(changed)
    assert torch.allclose(before[:3], after[:3], atol=1e-6)
    assert not torch.allclose(before[3:], after[3:], atol=1e-3)
    bidirectional = shifted_model(backbone, "bidirectional", trainable_stages=stages)
    with torch.no_grad(), frames_of(bidirectional.encoder, torch.tensor([5])):
        assert not torch.allclose(bidirectional.encoder(images)[2], bidirectional.encoder(changed)[2], atol=1e-4)


def test_the_shift_keeps_the_backbones_weights_and_only_the_learning_stages_shift():
    plain, shifted = shifted_model("resnet18", "off", trainable_stages=1), shifted_model("resnet18", "bidirectional", trainable_stages=1)
    assert plain.state_dict().keys() == shifted.state_dict().keys()
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in shifted.state_dict().items())
    kinds = {name: type(m).__name__ for name, m in shifted.encoder.trunk.named_modules()}
    assert [n for n, k in kinds.items() if k == "ShiftedConv2d"] == ["7.0.conv1", "7.1.conv1"]  # layer4's two blocks


def test_chunks_of_a_shifted_encoder_hold_whole_samples():
    lengths = torch.tensor([3, 2, 4, 1])
    images = torch.randn(int(lengths.sum()), 3, 16, 16, generator=torch.Generator().manual_seed(3))
    whole, chunked = shifted_model("tiny_cnn", "bidirectional"), shifted_model("tiny_cnn", "bidirectional", chunk_size=4)
    with torch.no_grad():
        assert torch.allclose(whole(images, lengths), chunked(images, lengths), atol=1e-5)
    chunked.encoder.checkpointing = True
    for model in (whole, chunked):  # BatchNorm on running statistics: chunks of a batch normalize alike
        model.train()
        model.encoder.set_frozen_norm(True)
    loss = chunked(images, lengths).sum()
    loss.backward()  # the checkpointed replay runs after the batch's layout is gone: each chunk keeps its own
    whole(images, lengths).sum().backward()
    compared = 0
    for a, b in zip(whole.encoder.parameters(), chunked.encoder.parameters()):
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-4, rtol=1e-3)
            compared += 1
    assert compared == len(list(whole.encoder.parameters()))


def test_a_shifted_encoder_refuses_to_run_without_its_samples():
    model = shifted_model("tiny_cnn", "causal")
    with pytest.raises(RuntimeError, match="where its samples start"):
        model.encoder(torch.randn(2, 3, 16, 16))


def test_options_that_cannot_shift_are_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="not with --freeze"):
        build_sequence_model(2, backbone="tiny_cnn", weights="none", freeze=True, temporal_shift="causal")
    with pytest.raises(ConfigError, match="not supported"):
        build_sequence_model(2, backbone="efficientnet_b0", weights="none", temporal_shift="causal")
    with pytest.raises(ConfigError, match="no residual block"):  # MobileNetV2's last stage is a 1x1 conv
        build_sequence_model(2, backbone="mobilenet_v2", weights="none", trainable_stages=1, temporal_shift="causal")
    from seqvision.cli import main

    assert main(["train", "--data", "x", "--temporal-shift", "sideways"]) != 0
    assert main(["train", "--data", "x", "--freeze", "--temporal-shift", "causal", "--out", "y"]) != 0
    assert "not with --freeze" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


@pytest.fixture(scope="module")
def shifted_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("shift")
    data = make_folder_dataset(root / "data", per_label=4)
    cfg = fast_config(data, max_epochs=2)
    cfg.model.temporal_shift = "causal"
    cfg.train.diagnostics = "fast"
    return data, cfg, train_and_evaluate(cfg, root / "run", progress=False)


def test_a_shifted_run_trains_and_its_checkpoint_predicts_what_the_model_computes(shifted_run):
    data, cfg, result = shifted_run
    predictor = Predictor.load(result.best_checkpoint, precision="32")
    assert predictor.model.encoder.shift_state.mode == "causal"
    samples = discover(str(data))
    predictions = predictor.run(samples)
    predictor.chunk_size = 2  # shorter than the samples: their clips still reach the CNN whole
    again = predictor.run(samples)
    assert torch.allclose(predictions.outputs, again.outputs, atol=1e-5)
    model = predictor.model.eval()
    dataset = predictor.dataset(samples[:1])
    item = dataset[0]
    with torch.no_grad():
        direct = model(item["clip"], torch.tensor(item["clip_lengths"]))
    assert torch.allclose(predictions.outputs[0], direct[0], atol=1e-4)


def test_a_causal_shift_streams_frame_by_frame_as_the_offline_model_on_every_prefix(shifted_run):
    """Online TSM: each shifted block's slice of the previous frame carried as state, beside the LSTM's."""
    from seqvision.streaming.stream import Stream

    _, _, result = shifted_run
    predictor = Predictor.load(result.best_checkpoint, precision="32")
    stream = Stream(predictor)
    frames = torch.randint(0, 256, (7, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    images = torch.cat([stream.transform([f]) for f in frames])  # (7, 3, 16, 16) as the stream feeds the CNN
    for restart in range(2):  # a reset starts a new sequence: the carried slices go too
        outputs = []
        for f in frames:
            stream.push(f)
            outputs.append(stream.last_output)
        with torch.no_grad():
            for t in range(len(frames)):
                offline = predictor.model(images[: t + 1], torch.tensor([t + 1]))[0]
                assert torch.allclose(outputs[t], offline, atol=1e-4), (restart, t)
        stream.reset()


def test_a_bidirectional_shift_cannot_stream_and_a_shifted_checkpoint_exports_with_its_stream_graph(shifted_run, tmp_path, capsys):
    from seqvision.cli import main
    from seqvision.streaming.stream import Stream

    _, _, result = shifted_run
    predictor = Predictor.load(result.best_checkpoint, precision="32")
    predictor.model.encoder.shift_state.mode = "bidirectional"  # as a model trained with it
    with pytest.raises(ConfigError, match="reads the next frame"):
        Stream(predictor)
    # the trained causal checkpoint exports: the whole graphs and the stream graph, each checked against the
    # live model (their equality on mixed lengths and on every prefix: tests/test_export_shift.py)
    assert main(["export", str(result.best_checkpoint), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "stream.onnx (max |onnx - PyTorch|" in printed and "frame by frame on every prefix" in printed
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["encoder.onnx", "model.json", "model.onnx", "sequence.onnx", "stream.onnx"]


def test_a_served_shifted_model_answers_each_request_as_predict_does_whatever_shares_its_batch(shifted_run):
    """Requests batched together reach the shifted CNN clip by clip: no shift reads a frame of another
    request, and a pass never splits a clip (chunk 3 < 4 images: a clip longer than it runs alone)."""
    from seqvision.serving.batching import DynamicBatcher

    data, _, result = shifted_run
    predictor = Predictor.load(result.best_checkpoint, precision="32")
    samples = discover(str(data))[:4]
    want = predictor.run(samples).outputs  # (4, K), each sample alone
    requests = []
    for sample in samples:
        item = predictor.dataset([sample])[0]
        requests.append((item["clip"], item["clip_lengths"]))
    for chunk in (64, 3):
        predictor.chunk_size = chunk
        batcher = DynamicBatcher(predictor, max_wait_ms=10_000, max_batch_images=sum(len(images) for images, _ in requests))
        futures = [batcher.submit(images, lengths) for images, lengths in requests]
        got = torch.cat([f.result(60) for f in futures])  # (4, K)
        stats = batcher.stats()
        batcher.close()
        assert stats["batches"] == 1, stats  # all four shared one batch
        assert torch.allclose(got, want, atol=1e-5), (chunk, got, want)


def test_fine_tuning_on_cached_maps_shifts_the_learning_stages(tmp_path, caplog):
    data = make_folder_dataset(tmp_path / "data", per_label=3)
    cfg = fast_config(data, max_epochs=1)
    cfg.model.trainable_stages, cfg.model.temporal_shift = 1, "bidirectional"
    cfg.data.augment = False
    cfg.data.cache = str(tmp_path / "cache")
    cfg.train.diagnostics = "fast"
    with caplog.at_level("INFO", logger="seqvision"):
        result = train_and_evaluate(cfg, tmp_path / "run", progress=False)
    assert any("cached maps" in r.getMessage() for r in caplog.records)
    predictor = Predictor.load(result.best_checkpoint, precision="32")
    encoder = predictor.model.encoder.eval()
    assert type(encoder.stages[-1][0]).__name__ == "ShiftedConv2d"
    # the last stages on the frozen stages' maps compute what the live shifted encoder computes
    from seqvision.models.stage_maps import FrozenStages, StageCut

    cut = StageCut.of(encoder, 1)
    lengths = torch.tensor([3, 2])
    images = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), frames_of(encoder, lengths):
        live = encoder(images)
        from_maps = cut.features(encoder, FrozenStages(encoder, cut)(images))
    assert torch.allclose(live, from_maps, atol=1e-5)


def test_diagnostics_of_a_shifted_model_run_only_what_is_true_of_it(shifted_run):
    from seqvision.evaluation.diagnostics import SHIFTED_NOTE
    from seqvision.evaluation.evaluate import evaluate_samples

    data, _, result = shifted_run
    predictor = Predictor.load(result.best_checkpoint, precision="32")
    metrics = evaluate_samples(predictor, discover(str(data)), diagnostics="full").metrics["diagnostics"]
    assert "shuffled" not in metrics and "reversed" not in metrics and "middle" not in metrics  # reordered features lie
    assert "mirrored" in metrics and metrics["findings"][0] == SHIFTED_NOTE
