"""The inference runtimes of the frozen CNN (torch, ONNX Runtime, OpenVINO): the same features, the
choice of ``auto`` measured once and remembered, clear refusals, and a cache key that keeps their
vectors apart."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import seqvision.features.runtimes as runtimes
from seqvision.cli import main
from seqvision.config import RUNTIME_CHOICES, DataConfig, ModelConfig, RunConfig, validate
from seqvision.data.discovery import discover
from seqvision.data.transforms import resolve_preprocessing
from seqvision.errors import ConfigError
from seqvision.features.cache import CacheKey, cache_info, weights_fingerprint
from seqvision.features.encode import input_layout, prepare_encoder
from seqvision.features.engines import EngineEncoder
from seqvision.features.runtimes import RUNTIMES, TORCH, Runtime, check_runtime, choose_runtime
from seqvision.inference.predictor import Predictor
from seqvision.models.backbones import build_backbone
from seqvision.models.sequence_model import build_sequence_model
from seqvision.workflows import extract, train_and_evaluate

from conftest import SHARED_WEIGHTS, fast_config, make_folder_dataset

CPU = torch.device("cpu")
ENGINES = [
    pytest.param(name, marks=pytest.mark.skipif(not runtimes.installed(name), reason=f"{name} is not installed"))
    for name in ("onnxruntime", "openvino")
]
PHOTOS = sorted(Path("/usr/share/doc/opencv-doc/examples/data").glob("*.jpg"))


@pytest.fixture(autouse=True)
def fresh_log_memory(monkeypatch):
    """Each test is a run of its own: the choices said once per run are said again."""
    monkeypatch.setattr(runtimes, "_said", set())


@pytest.fixture
def worth_measuring(monkeypatch):
    """Every CNN counts as costly enough for ``auto`` to measure (the tests' CNNs are tiny)."""
    monkeypatch.setattr(runtimes, "MIN_FLOPS", 0.0)


def encoder_at(name: str, size: int, *, seed: int = 0):
    """A randomly initialised backbone at ``size`` px, its BatchNorm statistics measured on a few random
    batches: freshly initialised MobileNetV2 features are ~1e-9, down where runtimes that flush
    subnormal numbers to zero part ways with torch (real weights give features of ~1: see below)."""
    torch.manual_seed(seed)
    encoder = build_backbone(name, weights="none")
    encoder.preprocessing = resolve_preprocessing(encoder.preprocessing, image_size=size, resize_size=size)
    norms = [m for m in encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.momentum = None  # a plain average over the batches below
    encoder.train()
    with torch.no_grad():
        for _ in range(2):
            encoder(torch.randn(8, 3, size, size))
    return encoder.eval()


def agree(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """(max abs error relative to the largest feature, min cosine) of two ``(N, F)`` feature sets."""
    error = float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))
    return error, float(torch.nn.functional.cosine_similarity(got, want, dim=-1).min())


def test_the_choices_offered_are_the_runtimes_known():
    assert RUNTIME_CHOICES == RUNTIMES


@pytest.mark.parametrize("runtime,backbone,size", [
    *[pytest.param(*p.values, backbone, size, marks=p.marks) for p in ENGINES[:1] for backbone, size in
      [("tiny_cnn", 16), ("resnet18", 32), ("mobilenet_v2", 32)]],
    *[pytest.param(*p.values, "tiny_cnn", 16, marks=p.marks) for p in ENGINES[1:]],  # OpenVINO: the real weights below too
])
def test_an_engine_gives_torchs_features(runtime, backbone, size):
    encoder = encoder_at(backbone, size)
    images = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(1))  # (5, 3, S, S)
    with torch.inference_mode():
        want = encoder(images)
        net = prepare_encoder(encoder, CPU, dtype=torch.float32, runtime=Runtime.of(runtime))
        got = net(images)
        assert isinstance(net, EngineEncoder) and input_layout(net) == torch.contiguous_format
        channels_last = net(images.contiguous(memory_format=torch.channels_last))  # any layout is read right
    error, cosine = agree(got, want)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert error < 1e-4 and cosine > 0.99999, (error, cosine)
    assert torch.equal(channels_last, got)


@pytest.mark.parametrize("runtime", ENGINES)
def test_an_engine_keeps_the_chunk_size_and_leaves_the_encoder_alone(runtime):
    encoder = encoder_at("tiny_cnn", 16)
    before = weights_fingerprint(encoder)
    encoder.chunk_size = 2
    net = prepare_encoder(encoder, CPU, dtype=torch.float32, runtime=Runtime.of(runtime))
    calls = []
    real = net._run
    net._run = lambda batch: calls.append(len(batch)) or real(batch)
    with torch.inference_mode():
        net(torch.randn(5, 3, 16, 16))
        assert net(torch.randn(0, 3, 16, 16)).shape == (0, encoder.num_features)
    assert calls == [2, 2, 1]  # bounded memory, as the torch encoder's chunks
    assert weights_fingerprint(encoder) == before


@pytest.mark.skipif(not SHARED_WEIGHTS.is_file() or not PHOTOS, reason="needs the shared ImageNet weights and opencv-doc's photos")
@pytest.mark.parametrize("runtime", ENGINES)
def test_real_weights_on_real_photos_agree_with_torch(runtime):
    from seqvision.data.images import load_image
    from seqvision.data.transforms import ClipTransform

    encoder = build_backbone("mobilenet_v2", weights=str(SHARED_WEIGHTS)).eval()
    encoder.preprocessing = resolve_preprocessing(encoder.preprocessing, mean=[0.5] * 3, std=[0.5] * 3)  # its README's
    transform = ClipTransform(encoder.preprocessing)
    images = transform([load_image(p, decode_size=transform.decode_size) for p in PHOTOS[:6]])  # (6, 3, 224, 224)
    with torch.inference_mode():
        want = encoder(images)
        got = prepare_encoder(encoder, CPU, dtype=torch.float32, runtime=Runtime.of(runtime))(images)
    error, cosine = agree(got, want)
    assert error < 1e-4 and cosine > 0.99999, (error, cosine)  # measured: 4e-6 and 0.9999998


def test_a_missing_runtime_is_refused_at_the_boundary_and_left_out_by_auto(monkeypatch, caplog, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ConfigError, match="pip install onnxruntime"):
        check_runtime("onnxruntime", CPU, torch.float32)
    monkeypatch.setattr(runtimes, "probe", lambda *a, **k: pytest.fail("nothing to compare: no probe"))
    with caplog.at_level(logging.INFO, logger="seqvision"):
        assert choose_runtime("auto", encoder_at("tiny_cnn", 16), CPU, torch.float32) == TORCH
        choose_runtime("auto", encoder_at("tiny_cnn", 16), CPU, torch.float32)
    said = [r.getMessage() for r in caplog.records if "not installed" in r.getMessage()]
    assert len(said) == 1 and "pip install onnxruntime openvino" in said[0], said  # one line, once per run
    data = make_folder_dataset(tmp_path / "data", per_label=1)
    assert main(["extract", "--data", str(data), "--backbone", "tiny_cnn", "--weights", "none", "--runtime", "onnxruntime",
                 "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 1
    assert not (tmp_path / "cache").exists()  # refused before any work


@pytest.mark.parametrize("device,dtype,fragment", [
    ("cuda", torch.float32, "on the CPU only"), ("cpu", torch.bfloat16, "float32 only"), ("cpu", torch.float16, "float32 only"),
])
@pytest.mark.parametrize("runtime", ENGINES)
def test_an_engine_refuses_a_gpu_or_a_lower_precision(runtime, device, dtype, fragment):
    with pytest.raises(ConfigError, match=fragment):
        check_runtime(runtime, torch.device(device), dtype)


def test_auto_is_torch_on_a_gpu_and_in_bf16_without_a_probe(monkeypatch):
    monkeypatch.setattr(runtimes, "probe", lambda *a, **k: pytest.fail("no probe for a GPU or bf16"))
    encoder = encoder_at("tiny_cnn", 16)
    assert choose_runtime("auto", encoder, torch.device("cuda"), torch.float32) == TORCH  # checked, not run
    assert choose_runtime("auto", encoder, CPU, torch.bfloat16) == TORCH


def test_a_bad_runtime_is_refused_before_work(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "data", per_label=1)
    assert main(["extract", "--data", str(data), "--runtime", "tensorrt", "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "--runtime" in capsys.readouterr().err and not (tmp_path / "cache").exists()
    with pytest.raises(ConfigError, match="feature_runtime"):
        validate(RunConfig(data=DataConfig(data=str(data), feature_runtime="tensorrt"), model=ModelConfig(freeze=True)))
    with pytest.raises(ConfigError, match="--runtime 'tensorrt'"):
        check_runtime("tensorrt", CPU, torch.float32)


@pytest.mark.parametrize("runtime", ENGINES)
def test_compile_is_torchs_and_refused_with_another_runtime(runtime, tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_label=1)
    cfg = RunConfig(data=DataConfig(data=str(data), image_size=16, resize_size=16, feature_runtime=runtime),
                    model=ModelConfig(backbone="tiny_cnn", weights="none", freeze=True))
    with pytest.raises(ConfigError, match="--compile"):
        extract(cfg, out=tmp_path / "cache", compile=True, progress=False)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("runtime", ["auto", *ENGINES])
def test_a_shifted_cnn_stays_on_torch(runtime, caplog):
    model = build_sequence_model(2, backbone="tiny_cnn", weights="none", head="lstm", hidden_size=8, temporal_shift="causal",
                                 trainable_stages=1)
    with caplog.at_level(logging.WARNING, logger="seqvision"):
        assert choose_runtime(runtime, model.encoder, CPU, torch.float32) == TORCH
        assert prepare_encoder(model.encoder, CPU, dtype=torch.float32, runtime=runtime) is model.encoder
    assert (runtime != "auto") == any("runs with torch" in r.getMessage() for r in caplog.records)


def test_auto_measures_once_and_remembers_its_choice(worth_measuring, monkeypatch, caplog):
    monkeypatch.setattr(runtimes, "installed", lambda name: name in ("torch", "onnxruntime"))
    calls = []

    def fake_probe(encoder, names, folder, **kwargs):
        calls.append(names)
        return {"torch": 40.0, "onnxruntime": 200.0}

    monkeypatch.setattr(runtimes, "probe", fake_probe)
    encoder = encoder_at("tiny_cnn", 16)
    with caplog.at_level(logging.INFO, logger="seqvision"):
        first = choose_runtime("auto", encoder, CPU, torch.float32)
        again = choose_runtime("auto", encoder, CPU, torch.float32)
    assert first == again == Runtime.of("onnxruntime")
    assert calls == [["torch", "onnxruntime"]]  # measured once: the second call read the remembered choice
    choices = json.loads((runtimes.runtimes_folder() / "choices.json").read_text())
    (entry, value), = choices.items()
    assert value == {"runtime": "onnxruntime", "images_per_second": {"torch": 40.0, "onnxruntime": 200.0}}
    assert "tiny_cnn" in entry and "16px" in entry and "float32" in entry and runtimes.cpu_signature() in entry
    chosen = [r for r in caplog.records if r.getMessage().startswith("runtime auto: onnxruntime")]
    assert len(chosen) == 1 and "measured once" in chosen[0].getMessage()  # one line per run
    choose_runtime("auto", encoder_at("tiny_cnn", 24), CPU, torch.float32)  # another image size: measured anew
    assert len(calls) == 2
    shorter = build_backbone("tiny_cnn", weights="none", drop_stages=1)
    shorter.preprocessing = encoder.preprocessing
    choose_runtime("auto", shorter, CPU, torch.float32)  # the same name, another network: measured anew
    assert len(calls) == 3


def test_processes_started_together_measure_once_and_choose_alike(worth_measuring, monkeypatch):
    import threading
    import time

    monkeypatch.setattr(runtimes, "installed", lambda name: name in ("torch", "onnxruntime"))
    calls = []

    def slow_probe(*args, **kwargs):
        calls.append(1)
        time.sleep(0.3)  # the others arrive while this one measures
        return {"torch": 40.0, "onnxruntime": 200.0}

    monkeypatch.setattr(runtimes, "probe", slow_probe)
    encoders = [encoder_at("tiny_cnn", 16) for _ in range(3)]
    chosen = []
    threads = [threading.Thread(target=lambda e=e: chosen.append(choose_runtime("auto", e, CPU, torch.float32))) for e in encoders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and chosen == [Runtime.of("onnxruntime")] * 3


@pytest.mark.parametrize("rates,chosen", [({"torch": 40.0, "onnxruntime": 44.0}, "torch"), ({"torch": 40.0}, "torch"),
                                          ({"torch": 40.0, "onnxruntime": 60.0}, "onnxruntime")])
def test_another_runtime_must_beat_torch_clearly(worth_measuring, monkeypatch, rates, chosen):
    monkeypatch.setattr(runtimes, "installed", lambda name: name in ("torch", "onnxruntime"))
    monkeypatch.setattr(runtimes, "probe", lambda *a, **k: dict(rates))
    assert choose_runtime("auto", encoder_at("tiny_cnn", 16), CPU, torch.float32).name == chosen


@pytest.mark.parametrize("runtime", ENGINES)
def test_the_probe_times_every_runtime(runtime):
    rates = runtimes.probe(encoder_at("tiny_cnn", 16), ["torch", runtime], runtimes.runtimes_folder())
    assert set(rates) == {"torch", runtime} and all(r > 0 for r in rates.values())


def test_a_cnn_cheaper_than_decoding_stays_on_torch_without_a_probe(monkeypatch):
    """Counted, not timed: a busy machine decides as an idle one (a probe timing 16 px images could not)."""
    monkeypatch.setattr(runtimes, "installed", lambda name: True)
    monkeypatch.setattr(runtimes, "probe", lambda *a, **k: pytest.fail("a tiny CNN: nothing to measure"))
    assert runtimes.cnn_flops(encoder_at("tiny_cnn", 16)) < runtimes.MIN_FLOPS < runtimes.cnn_flops(encoder_at("resnet18", 64))
    assert choose_runtime("auto", encoder_at("tiny_cnn", 16), CPU, torch.float32) == TORCH
    assert choose_runtime("auto", encoder_at("resnet18", 32), CPU, torch.float32) == TORCH  # 74 MFLOP


def test_onnx_files_are_exported_once_and_the_least_recently_used_removed(tmp_path, monkeypatch):
    import seqvision.features.engines as engines

    monkeypatch.setattr(engines, "KEEP_FILES", 2)
    first = encoder_at("tiny_cnn", 16, seed=1)
    path = engines.onnx_file(first, tmp_path)
    assert engines.onnx_file(first, tmp_path) == path  # not exported again
    assert engines.onnx_file(first, tmp_path, opset=16) != path  # another opset, another file
    for seed in (2, 3):  # other weights, other files; the least recently used go
        engines.onnx_file(encoder_at("tiny_cnn", 16, seed=seed), tmp_path)
    assert len(list(tmp_path.glob("*.onnx"))) == 2 and not path.exists()


def test_the_cache_key_names_the_runtime_and_torchs_key_is_unchanged():
    encoder = encoder_at("tiny_cnn", 16)
    torch_key = CacheKey.for_encoder(encoder, encoder.preprocessing)
    assert "runtime" not in torch_key.to_dict()  # every cache made before runtimes existed keeps its folder
    fields = ("backbone", "weights", "preprocessing", "pool", "dtype", "compute")  # the key before runtimes existed
    before = {name: getattr(torch_key, name) for name in fields}
    assert torch_key.digest == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:20]
    ort = CacheKey.for_encoder(encoder, encoder.preprocessing, runtime="onnxruntime 1.32.0")
    newer = CacheKey.for_encoder(encoder, encoder.preprocessing, runtime="onnxruntime 1.33.0")
    assert len({torch_key.digest, ort.digest, newer.digest}) == 3  # another runtime or version: another folder
    assert ort.to_dict()["runtime"] == "onnxruntime 1.32.0"
    assert Runtime.from_label("onnxruntime 1.32.0") == Runtime("onnxruntime", "1.32.0")
    assert Runtime.from_label("torch") == TORCH


@pytest.mark.parametrize("runtime", ENGINES)
def test_extract_keeps_each_runtimes_vectors_apart(runtime, tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "data", per_label=2)
    cache = tmp_path / "cache"
    common = ["extract", "--data", str(data), "--backbone", "tiny_cnn", "--weights", "none", "--image-size", "16",
              "--resize-size", "16", "--cache-dir", str(cache), "--no-progress", "--precision", "32"]
    torch.manual_seed(0)  # tiny_cnn with weights none: the same random weights for both extractions
    assert main([*common, "--runtime", "torch"]) == 0
    torch.manual_seed(0)
    assert main([*common, "--runtime", runtime]) == 0
    out = capsys.readouterr().out
    assert f"float32, {Runtime.of(runtime).label})" in out and "float32, torch)" in out
    entries = {e["runtime"]: e for e in cache_info(cache)}
    assert set(entries) == {"torch", Runtime.of(runtime).label} and all(e["entries"] == 10 for e in entries.values())
    rows = {}
    for name, entry in entries.items():
        meta = json.loads((cache / entry["key"] / "meta.json").read_text())
        assert meta.get("runtime", "torch") == name
        by_image = {}
        for record in (cache / entry["key"]).glob("shard-*.json"):
            by_image.update(zip(json.loads(record.read_text())["identities"], np.load(record.with_suffix(".npy"))))
        rows[name] = torch.from_numpy(np.stack([by_image[i] for i in sorted(by_image)]))  # (10, F), image by image
    error, cosine = agree(rows[Runtime.of(runtime).label], rows["torch"])
    assert error < 1e-4 and cosine > 0.99999


def test_auto_keeps_the_runtime_of_an_existing_cache(tmp_path, monkeypatch):
    data = make_folder_dataset(tmp_path / "data", per_label=1)
    cfg = RunConfig(data=DataConfig(data=str(data), image_size=16, resize_size=16, feature_precision="32", feature_runtime="torch"),
                    model=ModelConfig(backbone="tiny_cnn", weights="none", freeze=True))
    torch.manual_seed(0)
    _, first = extract(cfg, out=tmp_path / "cache", progress=False)
    monkeypatch.setattr(runtimes, "installed", lambda name: True)
    monkeypatch.setattr(runtimes, "probe", lambda *a, **k: pytest.fail("a cache exists: nothing to measure"))
    cfg.data.feature_runtime = "auto"
    torch.manual_seed(0)
    stats, again = extract(cfg, out=tmp_path / "cache", progress=False)
    assert again.dir == first.dir and stats.cached == 4 and stats.images == 0 and stats.runtime == "torch"


@pytest.fixture(scope="module")
def engine_run(tmp_path_factory):
    """A frozen run whose cache ONNX Runtime filled (one run shared by the tests that read it)."""
    if not runtimes.installed("onnxruntime"):
        pytest.skip("onnxruntime is not installed")
    root = tmp_path_factory.mktemp("engine")
    data = make_folder_dataset(root / "data", per_label=4)
    cfg = fast_config(data, max_epochs=2)
    cfg.model.freeze = True
    cfg.data.cache = str(root / "cache")
    cfg.data.feature_precision = "32"
    cfg.data.feature_runtime = "onnxruntime"
    cfg.train.diagnostics = "off"
    result = train_and_evaluate(cfg, root / "out", progress=False)
    return data, cfg, result


def test_a_frozen_run_records_the_runtime_that_filled_its_cache(engine_run):
    data, cfg, result = engine_run
    label = Runtime.of("onnxruntime").label
    assert result.feature_cache["runtime"] == label
    assert json.loads((Path(result.feature_cache["dir"]) / "meta.json").read_text())["runtime"] == label
    predictor = Predictor.load(result.best_checkpoint, precision="32")
    assert predictor.feature_runtime == label
    store = predictor.cached_store(discover(data))  # evaluate and report find the vectors it trained on
    assert store is not None and store.dir == Path(result.feature_cache["dir"])
    assert cfg.cnn_runtime() == "onnxruntime" and RunConfig().cnn_runtime() == "torch"


@pytest.mark.parametrize("runtime", ENGINES)
def test_a_predictor_predicts_the_same_on_every_runtime(engine_run, runtime, tmp_path):
    data, _, result = engine_run
    samples = discover(data)
    by_torch = Predictor.load(result.best_checkpoint, precision="32", runtime="torch")
    by_engine = Predictor.load(result.best_checkpoint, precision="32", runtime=runtime)
    want, got = by_torch.run(samples), by_engine.run(samples)
    assert isinstance(by_engine._inference_encoder(), EngineEncoder)
    assert got.sample_ids == want.sample_ids
    assert torch.allclose(got.outputs, want.outputs, atol=1e-5)
    assert [r["prediction"] for r in by_engine.rows(got)] == [r["prediction"] for r in by_torch.rows(want)]
    out = tmp_path / "preds.json"
    assert main(["predict", str(result.best_checkpoint), str(data), "--precision", "32", "--runtime", runtime, "--out", str(out)]) == 0
    assert [r["prediction"] for r in json.loads(out.read_text())] == [r["prediction"] for r in by_torch.rows(want)]


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="onnx (the export extra) is not installed")
def test_export_is_unchanged_by_a_predictor_that_ran_on_an_engine(engine_run, tmp_path):
    from seqvision.export.exporter import export_predictor

    data, _, result = engine_run
    predictor = Predictor.load(result.best_checkpoint, precision="32", runtime="onnxruntime")
    predictor.run(discover(data))  # its CNN ran on ONNX Runtime
    plain = export_predictor(Predictor.load(result.best_checkpoint, precision="32", runtime="torch"), tmp_path / "a")
    after = export_predictor(predictor, tmp_path / "b")
    assert after.max_diff == plain.max_diff and max(after.max_diff.values()) <= 1e-4
    assert weights_fingerprint(predictor.model.encoder) == weights_fingerprint(
        Predictor.load(result.best_checkpoint, precision="32").model.encoder)


def test_an_onnx_file_that_cannot_be_written_is_a_storage_error_naming_the_folder(monkeypatch, tmp_path):
    """No room or no permission in the cache is not "the backbone does not export": the message names the
    folder and the way out."""
    from seqvision.errors import StorageError

    def refuse(encoder, folder, **_):
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr(runtimes, "onnx_file", refuse)
    encoder = encoder_at("tiny_cnn", 32)
    with pytest.raises(StorageError, match=r"cannot write the CNN's ONNX file in .*SEQVISION_CACHE"):
        runtimes.build_engine(Runtime.of("onnxruntime"), encoder, root=tmp_path)


def test_train_names_its_feature_flags_in_the_runtimes_refusals(monkeypatch, tmp_path):
    """train passes the frozen CNN's runtime and precision as --feature-runtime/--feature-precision (its own
    --precision is the training's): a refusal met while it fills the cache names those."""
    if not runtimes.installed("onnxruntime"):
        pytest.skip("onnxruntime is not installed")

    def no_export(encoder, folder, **_):
        raise RuntimeError("an op the exporter lacks")

    monkeypatch.setattr(runtimes, "onnx_file", no_export)
    cfg = fast_config(make_folder_dataset(tmp_path / "data", per_label=2))
    cfg.model.freeze = True
    cfg.data.cache = str(tmp_path / "cache")
    cfg.data.feature_precision, cfg.data.feature_runtime = "32", "onnxruntime"
    with pytest.raises(ConfigError) as refused:
        train_and_evaluate(cfg, tmp_path / "out", progress=False)
    message = str(refused.value)
    assert "--feature-runtime onnxruntime: backbone 'tiny_cnn' does not export" in message and "use --feature-runtime torch" in message
    assert " --runtime" not in message and not message.startswith("--runtime")


def test_feature_flags_rename_only_the_flags_named():
    with pytest.raises(ConfigError, match=r"^--feature-precision int8: .* use --feature-precision 32 \(not --feature-runtime-x\)$"):
        with runtimes.feature_flags():
            raise ConfigError("--precision int8: drifts; use --precision 32 (not --feature-runtime-x)")
    # onnxruntime: in the dev extra, so installed wherever the suite runs (openvino is optional: without it
    # the refusal would be "not installed", before the device is looked at)
    with pytest.raises(ConfigError, match=r"^--feature-runtime onnxruntime runs .* on --device cuda use --feature-runtime torch or auto$"):
        with runtimes.feature_flags():
            check_runtime("onnxruntime", torch.device("cuda"), torch.float32)
    other = ValueError("--precision is not ours to rename")
    with pytest.raises(ValueError) as kept, runtimes.feature_flags():
        raise other
    assert kept.value is other


def test_evaluation_runs_a_frozen_runs_cnn_on_the_runtime_that_filled_its_cache(worth_measuring, monkeypatch, tmp_path):
    """auto chose ONNX Runtime to fill the cache: where the cache misses, train's own evaluation and report
    run the CNN on ONNX Runtime too (the features it trained on), not on whatever auto would choose now."""
    if not runtimes.installed("onnxruntime"):
        pytest.skip("onnxruntime is not installed")
    import seqvision.inference.predictor as predictor_module
    import seqvision.workflows as workflows
    from seqvision.evaluation.evaluate import report

    monkeypatch.setattr(runtimes, "installed", lambda name: name in ("torch", "onnxruntime"))
    monkeypatch.setattr(runtimes, "probe", lambda encoder, names, folder, **_: {n: 10.0 if n == "onnxruntime" else 1.0 for n in names})
    cfg = fast_config(make_folder_dataset(tmp_path / "data", per_label=2))
    cfg.model.freeze = True
    cfg.data.cache = str(tmp_path / "cache")
    cfg.data.feature_precision = "32"
    cfg.train.diagnostics = "off"
    asked: list[str] = []
    evaluate_samples = workflows.evaluate_samples

    def spy(predictor, *args, **kwargs):
        asked.append(predictor.runtime)
        return evaluate_samples(predictor, *args, **kwargs)

    monkeypatch.setattr(workflows, "evaluate_samples", spy)
    result = train_and_evaluate(cfg, tmp_path / "out", progress=False)
    assert result.feature_cache["runtime"] == Runtime.of("onnxruntime").label and cfg.cnn_runtime() == "auto"
    assert asked and set(asked) == {"onnxruntime"}
    choose = predictor_module.choose_runtime
    chosen: list[str] = []
    monkeypatch.setattr(predictor_module, "choose_runtime", lambda runtime, *a, **k: chosen.append(runtime) or choose(runtime, *a, **k))
    import shutil

    shutil.rmtree(result.feature_cache["dir"])  # every image a cache miss: the CNN runs live
    report(tmp_path / "out", precision="32")
    assert chosen and set(chosen) == {"onnxruntime"}


def test_the_runtimes_files_follow_the_cache_folder(engine_run, tmp_path):
    """train --cache DIR (and extract --cache-dir DIR) keep the CNN's ONNX file in DIR/.runtimes, beside
    auto's remembered choices, not in the default cache root."""
    _, cfg, _ = engine_run
    assert list((Path(cfg.data.cache) / ".runtimes" / "onnx").glob("*.onnx"))
    assert not list(runtimes.runtimes_folder().glob("onnx/*.onnx"))
    data = make_folder_dataset(tmp_path / "data", per_label=1)
    assert main(["extract", "--data", str(data), "--backbone", "tiny_cnn", "--weights", "none", "--image-size", "16",
                 "--resize-size", "16", "--cache-dir", str(tmp_path / "elsewhere"), "--no-progress", "--precision", "32",
                 "--runtime", "onnxruntime"]) == 0
    assert list((tmp_path / "elsewhere" / ".runtimes" / "onnx").glob("*.onnx"))
    assert not list(runtimes.runtimes_folder().glob("onnx/*.onnx"))


@pytest.mark.parametrize("runtime", ENGINES)
def test_an_engine_extracts_with_the_decoding_beside_it_and_keeps_its_features(runtime, tmp_path, monkeypatch):
    """On a small CPU's path (decoding threads in the process) an engine's CNN runs while the next batch is
    decoded; every row is still the engine's features of its own image."""
    import dataclasses

    from seqvision.data.images import load_image
    from seqvision.data.transforms import ClipTransform
    from seqvision.features import extract as extraction
    from seqvision.features.cache import FeatureStore
    from seqvision.features.extract import extract_features
    from seqvision.features.loading import prefetch

    samples = discover(make_folder_dataset(tmp_path / "data"))  # 18 images
    encoder = encoder_at("tiny_cnn", 16)
    prep, label = encoder.preprocessing, Runtime.of(runtime).label
    store = FeatureStore(tmp_path / "cache", dataclasses.replace(CacheKey.for_encoder(encoder, prep), runtime=label))
    ahead: list[bool] = []
    monkeypatch.setattr(extraction, "prefetch", lambda work, **kw: ahead.append(True) or prefetch(work, **kw))
    stats = extract_features(samples, encoder, prep, store, batch_size=4, num_workers=0, precision="32", progress=False)
    assert stats.images == 18 and stats.runtime == label and ahead  # decoded ahead, beside the engine
    paths = [f.path for s in samples for f in s.frames]
    engine = prepare_encoder(encoder, CPU, dtype=torch.float32, runtime=runtime, root=tmp_path / "cache")
    with torch.inference_mode():
        want = engine(ClipTransform(prep)([load_image(p) for p in paths]))  # (18, F), decoded apart, one batch
    error, cosine = agree(store.read(store.locate(paths)), want)
    assert error < 1e-5 and cosine > 0.99999


def test_decoding_overlaps_an_engines_cnn_but_not_torchs_team(tmp_path):
    """Decoding threads run beside an engine, whose idle threads then sleep rather than spin on the cores
    the decoding needs; torch's OpenMP team gets the cores to itself between the decoding (one thread of
    the team descheduled stalls all of them); workers decode beside any CNN by themselves."""
    from seqvision.features.extract import overlaps

    encoder = encoder_at("tiny_cnn", 16)
    net = prepare_encoder(encoder, CPU, dtype=torch.float32, runtime="torch")
    assert not overlaps(net, 0, True) and not overlaps(net, 2, False) and overlaps(net, 0, False)
    if not runtimes.installed("onnxruntime"):
        pytest.skip("onnxruntime is not installed")
    shared = prepare_encoder(encoder, CPU, dtype=torch.float32, runtime="onnxruntime", root=tmp_path, shares_cores=True)
    assert overlaps(shared, 0, True) and not overlaps(shared, 2, False)
    options = shared.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    alone = prepare_encoder(encoder, CPU, dtype=torch.float32, runtime="onnxruntime", root=tmp_path)  # predict, stream
    with pytest.raises(RuntimeError, match="does not have configuration"):  # ONNX Runtime's default: spinning
        alone.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
