"""``--precision int8``: the frozen CNN statically quantized by ONNX Runtime on the run's own first images;
features close to fp32, kept apart from them in the cache, and clear one-line refusals before any work."""

from __future__ import annotations

import pytest
import torch

import seqvision.features.int8 as int8
import seqvision.features.runtimes as runtimes
from seqvision.cli import main
from seqvision.config import DataConfig, ModelConfig, RunConfig, validate
from seqvision.errors import ConfigError
from seqvision.features.cache import CacheKey, cache_info
from seqvision.features.encode import encode_batch, input_layout, prepare_encoder
from seqvision.features.runtimes import Runtime, check_runtime, choose_runtime
from seqvision.runtime import inference_dtype

from conftest import make_folder_dataset
from test_runtimes import encoder_at

CPU = torch.device("cpu")
needs_ort = pytest.mark.skipif(not runtimes.installed("onnxruntime"), reason="onnxruntime is not installed")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """The ONNX files go to this test's cache root; the choices said once per run are said again."""
    monkeypatch.setenv("SEQVISION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(runtimes, "_said", set())


def images(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1  # (n, 3, S, S)


@pytest.fixture
def spy(monkeypatch):
    """Every image the quantizer's calibration reader hands out, batch by batch, and the number of calls."""
    from onnxruntime import quantization

    real, seen = quantization.quantize_static, {"calls": 0, "images": []}

    def recording(model, out, reader, **options):
        seen["calls"] += 1
        batches = []
        while (batch := reader.get_next()) is not None:
            batches.append(batch)
        seen["images"].append(torch.cat([torch.from_numpy(b["images"]) for b in batches]))

        class Replay(quantization.CalibrationDataReader):
            def __init__(self) -> None:
                self.left = iter(batches)

            def get_next(self):
                return next(self.left, None)

        return real(model, out, Replay(), **options)

    monkeypatch.setattr(quantization, "quantize_static", recording)
    return seen


@needs_ort
@pytest.mark.parametrize("name, size", [("tiny_cnn", 32), ("resnet18", 64)])
def test_int8_features_stay_close_to_fp32_on_images_it_was_not_calibrated_on(name, size):
    encoder = encoder_at(name, size)
    net = prepare_encoder(encoder, CPU, dtype=torch.int8, runtime="auto")
    assert input_layout(net) == torch.contiguous_format
    encode_batch(net, images(32, size, seed=1), torch.int8)  # calibrates on these
    unseen = images(16, size, seed=2)
    got = encode_batch(net, unseen, torch.int8)  # (16, F)
    with torch.no_grad():
        want = encoder(unseen)
    cosine = torch.nn.functional.cosine_similarity(got, want, dim=-1)
    assert got.shape == want.shape and cosine.min() > 0.98
    assert not torch.equal(got, want)  # quantized indeed, not the fp32 graph


@needs_ort
def test_calibration_reads_the_first_images_given_and_the_file_is_keyed_by_them(spy, tmp_path):
    encoder = encoder_at("tiny_cnn", 32)
    batch = images(int8.CALIBRATION_IMAGES + 16, 32, seed=3)
    net = prepare_encoder(encoder, CPU, dtype=torch.int8, runtime="onnxruntime")
    encode_batch(net, batch, torch.int8)
    assert spy["calls"] == 1 and torch.equal(spy["images"][0], batch[: int8.CALIBRATION_IMAGES])
    assert net.calibrated_on == int8.CALIBRATION_IMAGES
    folder = tmp_path / "cache" / ".runtimes" / "onnx"
    fp32 = [p for p in folder.glob("*.onnx") if "-int8-" not in p.name]
    quantized = [p for p in folder.glob("*.onnx") if "-int8-" in p.name]
    assert len(fp32) == 1 and len(quantized) == 1 and quantized[0].name.startswith(fp32[0].stem)  # beside the fp32 file
    # the same first images: the kept file is read, nothing is quantized again
    encode_batch(prepare_encoder(encoder, CPU, dtype=torch.int8, runtime="onnxruntime"), batch, torch.int8)
    assert spy["calls"] == 1
    # other images: another calibration, another file
    encode_batch(prepare_encoder(encoder, CPU, dtype=torch.int8, runtime="onnxruntime"), images(8, 32, seed=4), torch.int8)
    assert spy["calls"] == 2 and len(list(folder.glob("*-int8-*.onnx"))) == 2


@needs_ort
def test_an_int8_network_that_loses_its_features_is_refused_before_any_vector(monkeypatch):
    monkeypatch.setattr(int8, "MIN_COSINE", 1.01)  # no int8 network reaches it
    net = prepare_encoder(encoder_at("tiny_cnn", 32), CPU, dtype=torch.int8, runtime="auto")
    with pytest.raises(ConfigError, match="does not keep its features") as err:
        encode_batch(net, images(8, 32, seed=5), torch.int8)
    assert "\n" not in str(err.value) and "--precision 32" in str(err.value)
    assert net.session is None


def test_the_cache_key_records_int8_and_its_runtime():
    encoder = encoder_at("tiny_cnn", 16)
    fp32 = CacheKey.for_encoder(encoder, encoder.preprocessing, runtime="onnxruntime 1.32.0")
    quantized = CacheKey.for_encoder(encoder, encoder.preprocessing, compute=torch.int8, runtime="onnxruntime 1.32.0")
    assert quantized.to_dict()["compute"] == "int8" and quantized.to_dict()["runtime"] == "onnxruntime 1.32.0"
    assert quantized.digest != fp32.digest
    assert inference_dtype(CPU, "int8") == torch.int8


@needs_ort
def test_extract_int8_fills_a_cache_of_its_own(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "data", per_label=2)
    cache = tmp_path / "features"
    common = ["extract", "--data", str(data), "--backbone", "tiny_cnn", "--weights", "none", "--image-size", "16",
              "--resize-size", "16", "--cache-dir", str(cache), "--no-progress"]
    torch.manual_seed(0)
    assert main([*common, "--precision", "32", "--runtime", "onnxruntime"]) == 0
    torch.manual_seed(0)
    assert main([*common, "--precision", "int8"]) == 0  # auto: ONNX Runtime, the only runtime of int8
    label = Runtime.of("onnxruntime").label
    entries = {e["compute"]: e for e in cache_info(cache)}
    assert set(entries) == {"float32", "int8"} and entries["int8"]["runtime"] == label
    assert entries["int8"]["key"] != entries["float32"]["key"] and entries["int8"]["entries"] == 10


@pytest.mark.parametrize("runtime, device, message", [
    ("torch", CPU, "ONNX Runtime only"),
    ("openvino", CPU, "ONNX Runtime only"),
    ("auto", torch.device("cuda"), "CPU only"),
    ("onnxruntime", torch.device("cuda"), "CPU only"),
])
def test_int8_refusals_are_one_line(runtime, device, message):
    with pytest.raises(ConfigError, match=message) as err:
        check_runtime(runtime, device, torch.int8)
    assert "\n" not in str(err.value)


def test_int8_without_onnxruntime_names_the_pip_install(monkeypatch):
    monkeypatch.setattr(runtimes, "installed", lambda name: name == "torch")
    with pytest.raises(ConfigError, match="pip install onnxruntime"):
        choose_runtime("auto", encoder_at("tiny_cnn", 16), CPU, torch.int8)
    cfg = RunConfig(data=DataConfig(data=".", feature_precision="int8"), model=ModelConfig(backbone="tiny_cnn", freeze=True))
    with pytest.raises(ConfigError, match="pip install onnxruntime"):
        validate(cfg)


def test_train_refuses_int8_with_another_feature_runtime():
    cfg = RunConfig(data=DataConfig(data=".", feature_precision="int8", feature_runtime="torch"),
                    model=ModelConfig(backbone="tiny_cnn", freeze=True))
    with pytest.raises(ConfigError, match="ONNX Runtime only"):
        validate(cfg)


def test_extract_int8_with_torch_fails_in_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    data = make_folder_dataset(tmp_path / "data", per_label=1)
    monkeypatch.setattr(int8, "int8_file", lambda *a, **k: pytest.fail("refused before any work"))
    cache = tmp_path / "features"
    code = main(["extract", "--data", str(data), "--backbone", "tiny_cnn", "--weights", "none", "--image-size", "16",
                 "--resize-size", "16", "--cache-dir", str(cache), "--no-progress", "--precision", "int8", "--runtime", "torch"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "ONNX Runtime only" in err and len(err.splitlines()) == 1
    assert not any(p.is_dir() and not p.name.startswith(".") for p in cache.glob("*"))  # no key folder made


def test_stream_and_serve_refuse_int8_before_loading(tmp_path):
    from seqvision.serving.server import serve
    from seqvision.streaming.run import run_stream

    checkpoint = tmp_path / "best.ckpt"
    checkpoint.write_bytes(b"not a checkpoint: loading it would raise CheckpointError")
    (tmp_path / "frames").mkdir()
    with pytest.raises(ConfigError, match="int8 calibrates on a batch") as err:
        run_stream(checkpoint, tmp_path / "frames", precision="int8", max_frames=1)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="int8 calibrates on a batch"):
        serve(checkpoint, precision="int8")
