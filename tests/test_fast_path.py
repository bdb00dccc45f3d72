"""The CNN's inference fast path (channels_last, bf16 where fast, compile) serves extract, predict,
evaluate and the end-of-training evaluation; a frozen run evaluates from its feature cache."""

import copy
import json
import shutil

import pytest
import torch

import seqvision.runtime as runtime
from seqvision.cli import main
from seqvision.data.discovery import discover, discover_inputs
from seqvision.errors import CheckpointError, ConfigError
from seqvision.features.cache import CacheKey, FeatureStore
from seqvision.features.encode import CompiledEncoder, OneDNNEncoder, encode_batch, prepare_encoder
from seqvision.features.extract import extract_features
from seqvision.inference.predictor import Predictor
from seqvision.models.backbones import build_backbone
from seqvision.workflows import train_and_evaluate as train

from conftest import fast_config, make_folder_dataset


@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory):
    """A frozen-backbone run trained on cached features (one run shared by the tests that read it)."""
    root = tmp_path_factory.mktemp("frozen")
    data = make_folder_dataset(root / "data", per_label=4)
    cfg = fast_config(data, max_epochs=2)
    cfg.model.freeze = True
    cfg.data.cache = str(root / "cache")
    cfg.data.feature_precision = "32"  # fp32 rows: compared with the live fp32 CNN below
    cfg.train.diagnostics = "fast"  # the mirrored diagnostic would run the CNN on flipped images, by design

    def no_cnn(*args, **kwargs):
        raise AssertionError("the CNN ran although the features are cached")

    with pytest.MonkeyPatch.context() as patch:  # the end-of-run evaluation must read the cache
        patch.setattr("seqvision.inference.predictor.encode_batch", no_cnn)
        result = train(cfg, root / "out", progress=False)
    return data, cfg, result


def test_encoder_runs_channels_last_with_the_same_features():
    torch.manual_seed(0)
    encoder = build_backbone("tiny_cnn", weights="none").eval()
    conv = encoder.trunk[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    plain = copy.deepcopy(encoder).to(memory_format=torch.contiguous_format)
    images = torch.randn(5, 3, 16, 16)  # NCHW in: the encoder converts
    with torch.no_grad():
        expected = plain.trunk(images).mean(dim=(-2, -1))
        assert torch.allclose(encoder(images), expected, atol=1e-5)


def test_padding_a_batch_does_not_change_its_rows():
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = build_backbone("tiny_cnn", weights="none").eval()

        def forward(self, x):
            seen.append(x.shape[0])
            return self.encoder(x)

    net = Recorder()
    images = torch.randn(3, 3, 16, 16)
    padded = encode_batch(net, images, torch.float32, pad_to=8)
    plain = encode_batch(net, images, torch.float32)
    assert seen == [8, 3] and padded.shape == plain.shape == (3, 64)
    assert torch.allclose(padded, plain, atol=1e-6)


def test_compiled_extraction_matches_eager(tmp_path, caplog):
    data = make_folder_dataset(tmp_path / "data")
    samples = discover(data)
    torch.manual_seed(0)
    encoder = build_backbone("tiny_cnn", weights="none")
    prep = encoder.preprocessing
    rows = {}
    for compiled in (False, True):
        store = FeatureStore(tmp_path / f"cache-{compiled}", CacheKey.for_encoder(encoder, prep))
        with caplog.at_level("WARNING", logger="seqvision"):
            stats = extract_features(samples, encoder, prep, store, batch_size=8, precision="32", compile=compiled, progress=False)
        assert stats.images == 18  # batches of 8, 8 and 2 (padded to 8 for the compiled encoder)
        paths = [f.path for s in samples for f in s.frames]
        rows[compiled] = store.read(store.locate(paths))
    assert "torch.compile failed" not in caplog.text  # it really ran compiled
    assert torch.allclose(rows[True], rows[False], atol=1e-5)


def test_a_compiler_failure_falls_back_to_eager(monkeypatch, caplog):
    def broken_compile(module, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler found\nlong details")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    encoder = build_backbone("tiny_cnn", weights="none")
    net = prepare_encoder(encoder, torch.device("cpu"), compile=True)
    assert isinstance(net, CompiledEncoder)
    images = torch.randn(2, 3, 16, 16)
    with caplog.at_level("WARNING", logger="seqvision"):
        out = encode_batch(net, images, torch.float32)
        encode_batch(net, images, torch.float32)
    assert torch.allclose(out, encode_batch(encoder, images, torch.float32))
    assert caplog.text.count("torch.compile failed (RuntimeError: no C++ compiler found)") == 1


def _bf16_onednn() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


needs_bf16 = pytest.mark.skipif(not _bf16_onednn(), reason="this CPU has no oneDNN bf16")


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=needs_bf16)])
def test_onednn_cpu_path_gives_the_eager_features_and_leaves_the_encoder_alone(dtype):
    torch.manual_seed(0)
    encoder = build_backbone("tiny_cnn", weights="none")
    # give BatchNorm real statistics, so folding it into the convolutions is actually exercised
    encoder.train()(torch.rand(32, 3, 16, 16) * 3)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    net = prepare_encoder(encoder, torch.device("cpu"), dtype=dtype) if dtype == torch.bfloat16 else OneDNNEncoder(encoder.eval(), dtype)
    assert isinstance(net, OneDNNEncoder) and net.usable
    images = torch.rand(6, 3, 16, 16)
    fast, eager = encode_batch(net, images, dtype), encode_batch(encoder, images, dtype)
    assert fast.dtype == torch.float32 and fast.shape == eager.shape == (6, 64)
    assert torch.nn.functional.cosine_similarity(fast, eager, dim=-1).min() > (0.9999 if dtype == torch.float32 else 0.999)
    if dtype == torch.float32:
        assert torch.allclose(fast, eager, atol=1e-4, rtol=1e-4)
    # the model's own encoder keeps its weights, layout and ability to train
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert encoder.trunk[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    encoder.train()(images).sum().backward()
    assert encoder.trunk[0][0].weight.grad is not None


def test_fp32_inference_stays_on_the_eager_model_so_its_features_are_exact():
    encoder = build_backbone("tiny_cnn", weights="none")
    assert prepare_encoder(encoder, torch.device("cpu"), dtype=torch.float32) is encoder


def test_a_backbone_with_layers_onednn_lacks_runs_eagerly_without_noise(capfd):
    encoder = build_backbone("mobilenet_v2", weights="none")  # ReLU6 has no oneDNN-tensor kernel
    net = OneDNNEncoder(encoder.eval(), torch.float32)
    assert not net.usable and net.trunk is None
    assert capfd.readouterr().err == ""  # fx's own traceback print is kept quiet


@pytest.mark.parametrize("message, said", [("unsupported tensor layout: Mkldnn\ndetails", "(RuntimeError: unsupported tensor layout: Mkldnn)"),
                                           ("", "(RuntimeError)")])
def test_a_onednn_failure_later_falls_back_to_eager_once(monkeypatch, caplog, message, said):
    encoder = build_backbone("tiny_cnn", weights="none").eval()
    net = OneDNNEncoder(encoder, torch.float32)
    assert net.usable

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError(message)

    monkeypatch.setattr(net, "trunk", Broken())
    images = torch.rand(2, 3, 16, 16)
    with caplog.at_level("WARNING", logger="seqvision"):
        out = encode_batch(net, images, torch.float32)
        encode_batch(net, images, torch.float32)
    assert torch.allclose(out, encode_batch(encoder, images, torch.float32))
    assert caplog.text.count(f"the oneDNN CPU path failed {said}; running the encoder eagerly") == 1


def test_onednn_path_keeps_the_encoders_chunk_size():
    encoder = build_backbone("tiny_cnn", weights="none").eval()
    encoder.chunk_size = 2  # bounded memory for long sequences: the CNN never sees more images at once
    net = OneDNNEncoder(encoder, torch.float32)
    seen = []
    net.trunk.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    images = torch.rand(5, 3, 16, 16)
    out = encode_batch(net, images, torch.float32)
    assert seen == [2, 2, 1]
    assert torch.allclose(out, encode_batch(encoder, images, torch.float32), atol=1e-4, rtol=1e-4)


@needs_bf16
def test_extraction_hands_the_onednn_path_contiguous_batches_and_the_eager_path_channels_last(tmp_path, monkeypatch):
    """Each layout the CNN reads without a copy: oneDNN's reorder reads NCHW, eager convolutions channels_last
    (a batch in the other layout is converted whole, in the main thread, before every forward)."""
    from seqvision.data.transforms import resolve_preprocessing
    from seqvision.features.encode import input_layout

    samples = discover(make_folder_dataset(tmp_path / "data", per_label=2))
    encoder = build_backbone("tiny_cnn", weights="none")
    prep = resolve_preprocessing(encoder.preprocessing, image_size=16)
    layouts = []
    real_run = OneDNNEncoder._run
    monkeypatch.setattr(OneDNNEncoder, "_run", lambda self, images: layouts.append(images.is_contiguous()) or real_run(self, images))
    store = FeatureStore(tmp_path / "cache", CacheKey.for_encoder(encoder, prep, compute=torch.bfloat16))
    stats = extract_features(samples, encoder, prep, store, batch_size=4, num_workers=0, precision="bf16", progress=False)
    assert stats.images == 10 and len(layouts) == 4 and all(layouts)  # its probe at construction, then batches of 4, 4, 2
    assert input_layout(prepare_encoder(encoder, torch.device("cpu"), dtype=torch.bfloat16)) == torch.contiguous_format
    assert input_layout(prepare_encoder(encoder, torch.device("cpu"), dtype=torch.float32)) == torch.channels_last


@needs_bf16
def test_predictor_runs_the_cnn_on_the_onednn_path(frozen_run):
    _, _, result = frozen_run
    predictor = Predictor.load(result.best_checkpoint, precision="bf16")
    net = predictor._inference_encoder()
    assert isinstance(net, OneDNNEncoder) and net.eager is predictor.model.encoder
    assert predictor._inference_encoder() is net  # built once per device and precision


def test_auto_precision_is_bf16_only_where_the_cpu_is_fast_at_it(frozen_run, monkeypatch):
    _, _, result = frozen_run
    predictor = Predictor.load(result.best_checkpoint)  # precision auto
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: False)
    assert predictor.compute_dtype == torch.float32
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)
    assert predictor.compute_dtype == torch.bfloat16
    assert Predictor.load(result.best_checkpoint, precision="32").compute_dtype == torch.float32
    with pytest.raises(ConfigError, match="precision"):
        Predictor.load(result.best_checkpoint, precision="fp8")


def test_a_resolved_precision_passes_on_by_its_dtype_name_fp16_included(monkeypatch):
    # train --freeze and extract resolve "auto" once and hand str(dtype) on; on a CUDA GPU without bf16
    # that is "float16", which must parse back (it used to be refused and stop the run)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    gpu = torch.device("cuda")
    for precision in ("auto", "32", "bf16"):
        dtype = runtime.inference_dtype(gpu, precision)
        assert runtime.inference_dtype(gpu, str(dtype).removeprefix("torch.")) == dtype
    assert runtime.inference_dtype(gpu) == torch.float16


def test_bf16_predictions_are_close_to_fp32(frozen_run):
    data, _, result = frozen_run
    samples = discover(data)
    fp32 = Predictor.load(result.best_checkpoint, precision="32").run(samples)
    bf16 = Predictor.load(result.best_checkpoint, precision="bf16").run(samples)
    assert fp32.sample_ids == bf16.sample_ids
    assert torch.allclose(fp32.outputs.softmax(-1), bf16.outputs.softmax(-1), atol=0.02)


def test_frozen_run_evaluates_from_its_feature_cache(frozen_run, tmp_path, monkeypatch):
    """The end-of-run evaluation read the cached features (the fixture forbids the CNN), and they give
    what the live CNN gives."""
    data, cfg, result = frozen_run
    assert result.feature_cache["computed"] == 22
    val_ids = [k for k, v in json.loads((result.out_dir / "splits.json").read_text())["splits"].items() if v == "val"]
    samples = [s for s in discover(data) if s.id in val_ids]
    predictor = Predictor.load(result.best_checkpoint, precision="32")
    live_val = predictor.run(samples, with_targets=True)

    def no_cnn(*args, **kwargs):
        raise AssertionError("the CNN ran although the features are cached")

    monkeypatch.setattr("seqvision.inference.predictor.encode_batch", no_cnn)
    store = FeatureStore(cfg.data.cache, CacheKey.for_encoder(predictor.model.encoder, predictor.preprocessing))
    keys = []
    real_key = CacheKey.for_encoder
    monkeypatch.setattr(CacheKey, "for_encoder", lambda *a, **k: keys.append(1) or real_key(*a, **k))
    cached_val = predictor.run(samples, with_targets=True, store=store)
    assert torch.allclose(cached_val.outputs, live_val.outputs, atol=1e-5)
    predictor.run(samples, with_targets=True, store=store)  # e.g. val, then test
    assert len(keys) == 1  # the encoder's weights are hashed for the key check once, not per run
    assert result.val_metrics["num_samples"] == len(samples) > 0
    assert result.val_metrics["accuracy"] == pytest.approx(
        float((live_val.outputs.argmax(-1) == live_val.targets).float().mean())
    )


def test_a_cache_of_other_weights_is_refused(frozen_run, tmp_path):
    data, _, result = frozen_run
    other = build_backbone("tiny_cnn", weights="none")  # fresh random weights
    predictor = Predictor.load(result.best_checkpoint)
    store = FeatureStore(tmp_path / "c", CacheKey.for_encoder(other, predictor.preprocessing))
    with pytest.raises(CheckpointError, match="not computed with this checkpoint"):
        predictor.run(discover(data), store=store)


def test_cli_predict_takes_device_and_precision(frozen_run, tmp_path):
    data, _, result = frozen_run
    rows = {}
    for precision in ("32", "bf16"):
        out = tmp_path / f"{precision}.json"
        assert main(["predict", str(result.best_checkpoint), str(data), "--device", "cpu", "--precision", precision, "--out", str(out)]) == 0
        rows[precision] = json.loads(out.read_text())
        predictor = Predictor.load(result.best_checkpoint, device="cpu", precision=precision)
        assert rows[precision] == predictor.rows(predictor.run(discover_inputs([data])))  # the flag reached the CNN
    assert rows["32"] != rows["bf16"]  # ... and made a difference
    assert [r["sample"] for r in rows["32"]] == [r["sample"] for r in rows["bf16"]]
    assert all(abs(a["left"] - b["left"]) < 0.02 for a, b in zip(rows["32"], rows["bf16"]))


def test_report_of_a_frozen_run_uses_the_precision_its_cache_was_built_in(tmp_path, monkeypatch):
    from seqvision.evaluation.evaluate import report

    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)  # auto = bf16, on any CPU
    data = make_folder_dataset(tmp_path / "data", per_label=4)
    cfg = fast_config(data, max_epochs=2)
    cfg.model.freeze = True
    cfg.data.cache = str(tmp_path / "cache")
    assert cfg.cnn_precision() == "auto"
    result = train(cfg, tmp_path / "run", progress=False)
    (key,) = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*/meta.json")]
    assert key["compute"] == "bfloat16"
    used = []
    original_run = Predictor.run
    monkeypatch.setattr(Predictor, "run", lambda self, *a, **k: used.append(self.compute_dtype) or original_run(self, *a, **k))
    rebuilt = report(tmp_path / "run")  # runs the CNN live: in bf16 too, so the run's own numbers
    assert used and set(used) == {torch.bfloat16}  # the evaluation pass and the mirrored diagnostic alike
    assert rebuilt.metrics["accuracy"] == result.val_metrics["accuracy"]
    assert rebuilt.metrics["confusion_matrix"] == result.val_metrics["confusion_matrix"]


def test_inference_runs_the_cnn_in_chunks_with_the_same_outputs(tmp_path, monkeypatch):
    import seqvision.inference.predictor as predictor_module
    from seqvision.inference.predict import predict

    from conftest import fast_config, make_folder_dataset

    data = make_folder_dataset(tmp_path / "data", per_label=3, lengths=(9, 5, 12))
    result = train(fast_config(data, max_epochs=1), tmp_path / "run", progress=False)
    real, passes = predictor_module.encode_batch, []
    monkeypatch.setattr(predictor_module, "encode_batch", lambda net, images, dtype: passes.append(len(images)) or real(net, images, dtype))
    whole, _ = predict(result.best_checkpoint, [data], batch_size=6, precision="32", chunk_size=1000)
    assert max(passes) == sum((9, 5, 12)) * 2  # one pass over all images of the batch
    passes.clear()
    chunked, _ = predict(result.best_checkpoint, [data], batch_size=6, precision="32", chunk_size=4)
    assert max(passes) <= 4 and sum(passes) == 52
    for a, b in zip(whole, chunked):
        assert a["sample"] == b["sample"] and a["prediction"] == b["prediction"]
        assert abs(float(a["left"]) - float(b["left"])) < 1e-5


def test_the_encoder_carries_the_runs_resolved_preprocessing(tmp_path, monkeypatch):
    """One resolved preprocessing: the encoder handed to the inference fast path, and the memory probe,
    see the run's image size, not the pretrained one (on every CPU, bf16 instructions or not)."""
    from seqvision.inference import predictor as predictor_module

    prepared, planned = [], []
    real_prepare, real_plan = predictor_module.prepare_encoder, predictor_module.inference_chunk_size

    def spy_prepare(encoder, device, **kwargs):
        prepared.append(encoder.preprocessing.image_size)
        return real_prepare(encoder, device, **kwargs)

    def spy_plan(encoder, device, *, image_size=None):
        planned.append(image_size)
        return real_plan(encoder, device, image_size=image_size)

    monkeypatch.setattr(predictor_module, "prepare_encoder", spy_prepare)
    monkeypatch.setattr(predictor_module, "inference_chunk_size", spy_plan)
    from conftest import fast_config, make_folder_dataset

    data = make_folder_dataset(tmp_path / "data", per_label=2)
    cfg = fast_config(data, max_epochs=1)
    cfg.model.backbone = "resnet18"
    cfg.data.image_size = cfg.data.resize_size = 32
    result = train(cfg, tmp_path / "run", progress=False)
    prepared.clear(), planned.clear()  # only the reloaded predictor's calls count below
    predictor = Predictor.load(result.best_checkpoint, precision="bf16")
    assert predictor.model.encoder.preprocessing.image_size == 32
    predictor.run(discover(str(data)))
    assert prepared == [32] and planned == [32]


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
def test_the_onednn_probe_runs_at_the_encoders_image_size(monkeypatch):
    """The oneDNN copy's agreement probe reads the encoder's (resolved) image size. In fp32, which oneDNN
    builds on any CPU (its bf16 copy needs bf16 instructions, so the bf16 path cannot be probed everywhere)."""
    import dataclasses

    sizes = []
    real = OneDNNEncoder._agrees_on_a_probe
    monkeypatch.setattr(OneDNNEncoder, "_agrees_on_a_probe", lambda self: sizes.append(self.eager.preprocessing.image_size) or real(self))
    encoder = build_backbone("resnet18", weights="none").eval()
    encoder.preprocessing = dataclasses.replace(encoder.preprocessing, image_size=32, resize_size=32)
    assert OneDNNEncoder(encoder, torch.float32).usable
    assert sizes == [32]


def test_the_python_api_tunes_the_allocator_as_the_cli_does(frozen_run, tmp_path, monkeypatch):
    """predict, evaluate, report, Stream and train from Python keep the CNN's buffers in the heap, as every command
    does (runtime.tune_allocator; without it torch's MobileNetV2 ran 3x slower at batch 64)."""
    import seqvision
    from seqvision.inference import predictor
    from seqvision.training import fit

    data, _, result = frozen_run
    calls = []
    for module in (predictor, fit):
        monkeypatch.setattr(module, "tune_allocator", lambda: calls.append(1) or True)
    seqvision.predict(result.best_checkpoint, [data])
    assert len(calls) == 1
    seqvision.evaluate(result.best_checkpoint, data, diagnostics="off")
    assert len(calls) == 2
    run = shutil.copytree(result.out_dir, tmp_path / "run")  # report rewrites the run's folder: a copy of it
    seqvision.report(run, diagnostics="off")
    assert len(calls) == 3
    seqvision.Stream.load(result.best_checkpoint)
    assert len(calls) == 4
    cfg = fast_config(data, max_epochs=1)
    cfg.train.diagnostics = "off"
    seqvision.train(cfg, tmp_path / "train", progress=False)
    assert len(calls) == 6  # fit, then the end-of-run evaluation's Predictor.load
