"""``seqvision serve``: a real uvicorn server on 127.0.0.1, real HTTP requests (httpx), good and bad.

One tiny checkpoint is trained per module; every server binds an ephemeral loopback port."""

from __future__ import annotations

import io
import struct
import threading
import time
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from conftest import fast_config, make_folder_dataset, write_image
from PIL import Image
from test_data_video import write_video

from seqvision.cli import main
from seqvision.config import ModelConfig
from seqvision.data.samples import FrameRef, Sample
from seqvision.data.transforms import Preprocessing
from seqvision.errors import ConfigError
from seqvision.inference.predictor import Predictor
from seqvision.serving import ServeLimits
from seqvision.serving.app import build_app
from seqvision.serving.batching import DynamicBatcher
from seqvision.serving.server import API_KEY_ENV, is_loopback, resolve_api_key
from seqvision.tasks import TargetSpec
from seqvision.workflows import predict, train_and_evaluate

LIMITS = ServeLimits(max_request_mb=1, max_images=6, max_pixels=100_000, max_video_seconds=30)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    data = make_folder_dataset(root / "data", per_label=3, lengths=(3, 4, 2))
    result = train_and_evaluate(fast_config(data), root / "run")
    return data, Path(result.best_checkpoint)


@pytest.fixture(scope="module")
def predictor(trained):
    return Predictor.load(trained[1], precision="32")


@contextmanager
def running(app):
    """``app`` served by uvicorn on 127.0.0.1 (an ephemeral port) in a thread; yields an httpx client."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(1000):
        if server.started or not thread.is_alive():
            break
        time.sleep(0.01)
    assert server.started, "the server did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def uploads_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("uploads")


@pytest.fixture(scope="module")
def client(predictor, uploads_dir):
    with running(build_app(predictor, LIMITS, max_wait_ms=1, temp_dir=uploads_dir)) as c:
        yield c


def _files(paths, names=None):
    names = names or [p.name for p in paths]
    return [("files", (n, p.read_bytes(), "application/octet-stream")) for p, n in zip(paths, names)]


def _close(rows_a, rows_b):
    assert [r["prediction"] for r in rows_a] == [r["prediction"] for r in rows_b]
    for a, b in zip(rows_a, rows_b):
        keys = [k for k in a if k not in ("sample", "image", "prediction")]
        assert keys == [k for k in b if k not in ("sample", "image", "prediction")]
        assert np.allclose([a[k] for k in keys], [b[k] for k in keys], atol=1e-5), (a, b)


def test_images_predict_exactly_like_the_cli(trained, client, uploads_dir):
    data, ckpt = trained
    folder = data / "right" / "s1"
    frames = sorted(folder.iterdir())
    res = client.post("/predict", files=_files(frames), data={"sample": "mine"})
    assert res.status_code == 200, res.text
    body = res.json()
    want, _ = predict(ckpt, [folder], precision="32")
    assert body["predictions"][0]["sample"] == "mine" and len(body["predictions"]) == 1
    _close(body["predictions"], want)
    assert body["frames"] == [p.name for p in frames] and body["skipped"] == []
    assert list(uploads_dir.iterdir()) == []  # the request's folder is gone


def test_the_upload_order_is_the_order(trained, client, predictor):
    data, _ = trained
    frames = sorted((data / "left" / "s1").iterdir())[::-1]  # f3, f2, f1, f0: not natural order
    body = client.post("/predict", files=_files(frames)).json()
    assert body["frames"] == [p.name for p in frames]
    want = predictor.rows(predictor.run([Sample("x", [FrameRef(p) for p in frames])]))
    _close(body["predictions"], want)


def test_a_video_predicts_like_the_cli(trained, client, tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=6, fps=10, size=32)
    body = client.post("/predict", files=_files([video])).json()
    want, _ = predict(trained[1], [video], precision="32")
    assert body["predictions"][0]["sample"] == "clip.mp4"
    _close(body["predictions"], want)
    assert body["frames"] == [f"clip.mp4@{t / 10:.3f}s" for t in range(6)]  # no server path leaks
    longer = write_video(tmp_path / "long.mp4", frames=12, fps=10, size=32)  # every frame sampled: 12 > 6 images
    res = client.post("/predict", files=_files([longer]))
    assert res.status_code == 413 and "takes 12 frames of upload 'long.mp4'" in res.json()["error"]


def test_concurrent_requests_share_one_cnn_pass_and_answer_as_alone(trained, predictor):
    data, _ = trained
    requests = [sorted(p.iterdir()) for label in ("left", "right") for p in sorted((data / label).iterdir())]  # 6 samples
    requests += requests[:2]  # 8 requests
    with running(build_app(predictor, LIMITS, max_wait_ms=0)) as c:
        alone = [c.post("/predict", files=_files(r)).json()["predictions"] for r in requests]
    batcher = DynamicBatcher(predictor, max_wait_ms=50, max_batch_images=64, start=False)  # held until all wait
    answers: dict[int, dict] = {}
    with running(build_app(predictor, LIMITS, batcher=batcher)) as c:
        threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, c.post("/predict", files=_files(requests[i])).json()))
                   for i in range(len(requests))]
        for t in threads:
            t.start()
        _wait_for(lambda: batcher.queue_depth == len(requests))
        batcher.start()
        for t in threads:
            t.join(60)
        stats = c.get("/health").json()["batching"]
    batcher.close()
    assert stats["requests"] == 8 and stats["batches"] == 1 and stats["batch_requests"] == {"8": 1}
    assert stats["cnn_passes"] < 8 and stats["images"] == sum(len(r) for r in requests)
    for i, rows in enumerate(alone):
        _close(answers[i]["predictions"], rows)


def test_a_full_queue_answers_503(trained, predictor):
    frames = sorted((trained[0] / "left" / "s0").iterdir())
    batcher = DynamicBatcher(predictor, queue_size=1, start=False)  # its worker held: the queue stays full
    first: dict = {}
    with running(build_app(predictor, LIMITS, batcher=batcher)) as c:
        waiting = threading.Thread(target=lambda: first.setdefault("res", c.post("/predict", files=_files(frames))))
        waiting.start()
        _wait_for(lambda: batcher.queue_depth == 1)
        res = c.post("/predict", files=_files(frames))
        assert res.status_code == 503 and "busy" in res.json()["error"]
        assert c.get("/health").json()["queue_depth"] == 1
        batcher.start()
        waiting.join(60)
    batcher.close()
    assert first["res"].status_code == 200


def test_empty_and_malformed_requests_are_400(client):
    res = client.post("/predict")
    assert res.status_code == 400 and "empty request" in res.json()["error"]
    res = client.post("/predict", data={"sample": "x"}, files=[("other", ("a.png", b"x", "image/png"))])
    assert res.status_code == 400 and "'other'" in res.json()["error"]
    res = client.post("/predict", files=[])
    assert res.status_code == 400
    res = client.post("/predict", content=b"--b\r\nnot a part", headers={"content-type": "multipart/form-data; boundary=b"})
    assert res.status_code == 400 and "multipart" in res.json()["error"]
    res = client.post("/predict", json={"images": []})
    assert res.status_code == 415 and "multipart/form-data" in res.json()["error"]


def test_too_many_images_and_too_many_bytes_are_413(trained, client, uploads_dir):
    frames = sorted((trained[0] / "left" / "s1").iterdir())
    res = client.post("/predict", files=_files(frames * 2))  # 8 images, the limit is 6
    assert res.status_code == 413 and "more than 6 images" in res.json()["error"]
    big = np.random.default_rng(0).integers(0, 255, 1_500_000, dtype=np.uint8).tobytes()  # 1.4 MB, the limit is 1 MB
    res = client.post("/predict", files=[("files", ("big.png", big, "image/png"))])
    assert res.status_code == 413 and "1 MB limit" in res.json()["error"]

    def chunks():  # no Content-Length: the body is counted as it arrives
        yield b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n\r\n"
        for at in range(0, len(big), 65536):
            yield big[at : at + 65536]
        yield b"\r\n--b--\r\n"

    res = client.post("/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert res.status_code == 413 and "1 MB limit" in res.json()["error"]
    assert list(uploads_dir.iterdir()) == []


def test_decompression_bombs_and_large_images_are_413_before_decoding(client, tmp_path):
    res = client.post("/predict", files=[("files", ("bomb.png", _png_header(100_000, 100_000), "image/png"))])
    assert res.status_code == 413 and "bomb.png" in res.json()["error"]
    res = client.post("/predict", files=[("files", ("wide.png", _png_header(1000, 1000), "image/png"))])  # 1 M > 100 k
    assert res.status_code == 413 and "1000x1000" in res.json()["error"]
    big = write_image(tmp_path / "big.png", 100, size=400)  # 160 k pixels, a real image
    res = client.post("/predict", files=_files([big]))
    assert res.status_code == 413 and "100,000-pixel" in res.json()["error"]


def test_what_is_not_an_image_or_a_video_is_415_and_undecodable_is_422(trained, client, tmp_path):
    res = client.post("/predict", files=[("files", ("notes.txt", b"hello", "text/plain"))])
    assert res.status_code == 415 and "'notes.txt'" in res.json()["error"]
    res = client.post("/predict", files=[("files", ("fake.png", b"hello, not a png", "image/png"))])
    assert res.status_code == 415 and "'fake.png' is not a readable image" in res.json()["error"]
    res = client.post("/predict", files=[("files", ("fake.mp4", b"hello" * 100, "video/mp4"))])
    assert res.status_code == 415 and "'fake.mp4' is not a readable video" in res.json()["error"]
    good = (trained[0] / "left" / "s0" / "f0.png").read_bytes()
    res = client.post("/predict", files=[("files", ("cut.png", good[: len(good) // 2], "image/png"))])  # header fine, data cut
    assert res.status_code == 422 and "cut.png" in res.json()["error"] and "/tmp" not in res.json()["error"]
    video = write_video(tmp_path / "v.mp4")
    res = client.post("/predict", files=_files([video, video]))
    assert res.status_code == 400 and "one video" in res.json()["error"]


def test_an_api_key_is_required_on_every_request(predictor, trained):
    frames = sorted((trained[0] / "left" / "s0").iterdir())
    with running(build_app(predictor, LIMITS, api_key="s3cret")) as c:
        for path in ("/health", "/model", "/docs"):
            res = c.get(path)
            assert res.status_code == 401 and "missing API key" in res.json()["error"]
        assert c.get("/health", headers={"X-API-Key": "nope"}).status_code == 401
        assert c.get("/health", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        res = c.post("/predict", files=_files(frames), headers={"Authorization": "Bearer wrong"})
        assert res.status_code == 401 and res.json() == {"error": "wrong API key"}
        assert c.post("/predict", files=_files(frames), headers={"X-API-Key": "s3cret"}).status_code == 200


def test_model_and_health_describe_the_service(client, predictor):
    info = client.get("/model").json()
    assert info["task"] == "classification" and info["classes"] == ["left", "right"] and info["per_image"] is False
    want = {"image_size": 16, "resize_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear"}
    assert {k: info["preprocessing"][k] for k in want} == want  # and whatever else the checkpoint records
    assert info["sampling"]["mode"] == "uniform" and info["backbone"] == "tiny_cnn" and info["head"] == "lstm"
    assert info["limits"]["max_images"] == 6 and "thresholds" not in info
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["queue_depth"] == 0 and health["queue_size"] == 64
    assert {"requests", "batches", "cnn_passes", "images"} <= set(health["batching"])
    assert "/predict" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("kind", ["per_image", "multi_clip"])
def test_per_image_rows_and_multi_clip_averages_match_the_predictor(tmp_path, kind):
    data = make_folder_dataset(tmp_path / "data", per_label=1, lengths=(5,))
    frames = sorted((data / "left" / "s0").iterdir())
    spec = TargetSpec("frame_classification" if kind == "per_image" else "classification", class_names=["a", "b"])
    cfg = fast_config(data)
    cfg.model = ModelConfig(backbone="tiny_cnn", weights="none", hidden_size=8)
    if kind == "multi_clip":
        cfg.data.sampling, cfg.data.num_frames, cfg.data.eval_clips = "random", 3, 3
    torch.manual_seed(0)
    model = cfg.model.build_model(2, per_step=spec.per_image)
    prep = Preprocessing(image_size=16, resize_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    predictor = Predictor(model, cfg=cfg, spec=spec, preprocessing=prep, precision="32")
    want = predictor.rows(predictor.run([Sample("s", [FrameRef(p) for p in frames])]))
    with running(build_app(predictor, LIMITS)) as c:
        body = c.post("/predict", files=_files(frames), data={"sample": "s"}).json()
    assert len(body["predictions"]) == (5 if kind == "per_image" else 1)
    if kind == "per_image":
        assert [r["image"] for r in body["predictions"]] == [p.name for p in frames]
    else:
        assert len(body["frames"]) == 9  # 3 clips of 3 images
    _close(body["predictions"], want)


def test_the_batcher_waits_for_more_and_never_splits_a_request(predictor):
    images = torch.zeros(3, 3, 16, 16)
    together = DynamicBatcher(predictor, max_wait_ms=10_000, max_batch_images=6)  # full at 2 requests: no wait
    futures = [together.submit(images, [3]), together.submit(images, [3])]
    assert all(f.result(60).shape == (1, 2) for f in futures)
    together.close()
    assert together.stats()["batch_requests"] == {"2": 1}
    for limit in (1, 4):  # 1: no batching; 4: a second request of 3 would overflow, so it waits its turn
        alone = DynamicBatcher(predictor, max_wait_ms=0, max_batch_images=limit, start=False)
        futures = [alone.submit(images, [3]) for _ in range(3)]
        alone.start()
        assert all(f.result(60).shape == (1, 2) for f in futures)
        alone.close()
        assert alone.stats()["batch_requests"] == {"1": 3}
    with pytest.raises(ConfigError, match="queue-size"):
        DynamicBatcher(predictor, queue_size=0)


def test_limits_and_options_are_checked_before_loading(trained, tmp_path, capsys, monkeypatch):
    with pytest.raises(ConfigError, match="max-images"):
        ServeLimits(max_images=0)
    with pytest.raises(ConfigError, match="max-pixels"):
        ServeLimits(max_pixels=10**9)
    assert main(["serve", str(tmp_path / "missing.ckpt")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["serve", str(trained[1]), "--port", "70000"]) == 1
    assert "--port 70000" in capsys.readouterr().err
    assert main(["serve", str(trained[1]), "--max-wait-ms", "-1"]) == 1
    assert "--max-wait-ms" in capsys.readouterr().err
    assert main(["serve", str(trained[1]), "--max-images", "0"]) == 2
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    with pytest.warns(UserWarning, match="without an API key"):
        assert resolve_api_key(None, "0.0.0.0") is None
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_api_key(None, "0.0.0.0") == "from-env"
        assert resolve_api_key(None, "127.0.0.1") == "from-env"


def _wait_for(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels, with almost no data (a decompression bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_png_header_helper_claims_its_size():
    with Image.open(io.BytesIO(_png_header(300, 200))) as img:
        assert img.size == (300, 200)
