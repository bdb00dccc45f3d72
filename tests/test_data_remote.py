"""Data named by URL (issue #27, parts 1 and 5), against real services on loopback started here: an S3
server (moto's server mode) and a plain HTTP server. train / predict / extract read manifests of s3:// and
http:// URLs end to end; the feature cache finds a URL's image by its bytes; a missing object (also one
deleted mid-epoch), a slow server (HTTP and S3) and wrong credentials are one line (or a reported skip); no credential reaches the run folder."""

from __future__ import annotations

import functools
import socket
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from conftest import make_folder_dataset, write_image
from seqvision.cli import main
from seqvision.data.dataset import SequenceDataset, collate
from seqvision.data.discovery import discover, is_manifest
from seqvision.data.images import load_image
from seqvision.data.remote import join, shown, to_path, url_of
from seqvision.data.transforms import ClipTransform, Preprocessing
from seqvision.errors import BadFileError, ConfigError, DataError

boto3 = pytest.importorskip("boto3")
s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

KEY_ID, SECRET = "AKIAREMOTETEST000001", "s3cr3t-key-never-written-down"
BUCKET = "frames"
TINY = ["--backbone", "tiny_cnn", "--weights", "none", "--image-size", "16", "--resize-size", "16"]


def _train(data, out, *extra):
    return ["train", "--data", str(data), "--out", str(out), *TINY, "--max-epochs", "1", "--batch-size", "4",
            "--hidden-size", "8", "--num-workers", "0", "--val-fraction", "0.25", "--test-fraction", "0",
            "--diagnostics", "off", "--accelerator", "cpu", "--no-progress", *extra]


def _images(data: Path) -> list[Path]:
    return sorted(data.rglob("*.png"))


def _manifest(data: Path, name) -> str:
    """``sample_id,label,path`` rows, one per image, the path given by ``name(relative path)``."""
    rows = ["sample_id,label,path"]
    for image in _images(data):
        rel = image.relative_to(data)
        rows.append(f"{rel.parts[0]}/{rel.parts[1]},{rel.parts[0]},{name(rel.as_posix())}")
    return "\n".join(rows) + "\n"


def _secret_free(*folders_or_files: Path, secrets=(SECRET, KEY_ID)) -> None:
    for root in folders_or_files:
        for file in [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]:
            data = file.read_bytes()
            assert not any(s.encode() in data for s in secrets), f"a credential was written to {file}"


# --------------------------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("remote") / "data", per_label=4)  # 8 samples, 22 images


@pytest.fixture(scope="module")
def s3_endpoint(data):
    """A moto S3 server on 127.0.0.1 holding ``data`` under ``s3://frames/data/`` and its manifest (whose
    paths are keys relative to it) at ``s3://frames/data/manifest.csv``."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)
    client.create_bucket(Bucket=BUCKET)
    for image in _images(data):
        client.put_object(Bucket=BUCKET, Key=f"data/{image.relative_to(data).as_posix()}", Body=image.read_bytes())
    client.put_object(Bucket=BUCKET, Key="data/manifest.csv", Body=_manifest(data, lambda rel: rel).encode())
    yield endpoint, client
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """The S3 server's client, with the credentials where the AWS tools look for them (the environment)."""
    endpoint, client = s3_endpoint
    for name, value in {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_ENDPOINT_URL_S3": endpoint}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()  # credentials are read when an instance is made
    yield client
    s3fs.S3FileSystem.clear_instance_cache()


class _Handler(SimpleHTTPRequestHandler):
    """Files of the server's folder; ``server.slow``: paths answered after ``server.delay`` seconds;
    ``server.flaky``: paths answered 503 the first time; ``server.cut``: paths whose first answer stops
    half-way (the connection closed before the promised Content-Length)."""

    def do_GET(self):  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path in self.server.slow:
            time.sleep(self.server.delay)
        if path in self.server.flaky:
            self.server.flaky.discard(path)
            self.send_error(503, "try again")
            return
        if path in self.server.cut:
            self.server.cut.discard(path)
            body = Path(self.directory, path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        try:
            super().do_GET()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting: what a timeout does
            pass

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(scope="module")
def http_root(data):
    """A plain HTTP server on 127.0.0.1 serving the folder that holds ``data``; yields (base URL, server)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(data.parent)))
    server.slow, server.flaky, server.cut, server.delay = set(), set(), set(), 0.0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def http(http_root, monkeypatch):
    monkeypatch.setenv("SEQVISION_REMOTE_TIMEOUT", "5")
    base, server = http_root
    yield base, server
    server.slow.clear()
    server.flaky.clear()
    server.cut.clear()


class _SlowProxy:
    """A TCP proxy on 127.0.0.1 in front of the S3 server whose answers are held back ``delay`` seconds
    (0: passed on at once): an S3 endpoint that became slow, with the server behind it still well."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").rsplit(":", 1)
        self.upstream, self.delay = (host, int(port)), 0.0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, upstream, 0.0), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, self.delay), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, delay: float) -> None:
        try:
            while data := src.recv(1 << 16):
                time.sleep(delay)
                dst.sendall(data)
        except OSError:  # the client gave up (its timeout) and closed the connection
            pass
        for end in (src, dst):
            try:
                end.shutdown(socket.SHUT_RDWR)  # wakes the other direction's pump blocked in recv
            except OSError:
                pass
            end.close()

    def close(self) -> None:
        self.server.close()


# --------------------------------------------------------------------------------------------- units


def test_urls_travel_as_paths_and_are_shown_without_credentials():
    url = "https://user:pw@host:8443/a/b.jpg?sig=XYZ"
    assert url_of(to_path(url)) == url and url_of(Path("/local/s3:/x")) is None and url_of("rel/x.png") is None
    assert shown(to_path(url)) == "https://user@host:8443/a/b.jpg"
    assert to_path("file:///tmp/a%20b.png") == Path("/tmp/a b.png")
    assert url_of(join(to_path("s3://b/m/manifest.csv").parent, "../img/x.png")) == "s3://b/img/x.png"
    assert url_of(join(Path("/data"), "gs://b/x.png")) == "gs://b/x.png" and join(Path("/data"), "x.png") == Path("/data/x.png")
    assert is_manifest("https://h/m.csv?token=1") and not is_manifest("s3://b/folder/")


def test_unknown_protocols_and_bad_settings_are_refused_before_work(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="no protocol 'nope'"):
        discover("nope://bucket/m.csv")
    (tmp_path / "m.csv").write_text("sample_id,label,path\na,x,nope://b/1.png\n")
    with pytest.raises(ConfigError, match="line 2: .*no protocol 'nope'"):
        discover(tmp_path / "m.csv")
    monkeypatch.setenv("SEQVISION_REMOTE_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="SEQVISION_REMOTE_TIMEOUT"):
        load_image(to_path("http://127.0.0.1:9/x.png"))


# --------------------------------------------------------------------------------------------- end to end


def test_train_and_predict_from_a_manifest_on_s3_write_no_credential(s3, tmp_path, capsys):
    manifest = f"s3://{BUCKET}/data/manifest.csv"  # itself on S3; its paths are keys beside it
    assert main(_train(manifest, tmp_path / "run")) == 0
    assert "best checkpoint:" in capsys.readouterr().out
    assert main(["predict", str(tmp_path / "run" / "best.ckpt"), manifest, "--out", str(tmp_path / "p.csv")]) == 0
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 1 + 8
    _secret_free(tmp_path / "run", tmp_path / "p.csv")


def test_train_and_predict_from_http_urls_keep_passwords_and_tokens_out_of_what_they_write(http, tmp_path, capsys, data):
    base, _ = http
    host = base.removeprefix("http://")
    (tmp_path / "m.csv").write_text(_manifest(data, lambda rel: f"http://reader:pw-HTTP-1@{host}/data/{rel}?sig=TOKEN-2"))
    (data.parent / "http.csv").write_text((tmp_path / "m.csv").read_text())
    assert main(_train(f"{base}/http.csv?token=TOKEN-3", tmp_path / "run")) == 0  # the manifest by URL too
    assert main(["predict", str(tmp_path / "run" / "best.ckpt"), str(tmp_path / "m.csv"), "--out", str(tmp_path / "p.csv")]) == 0
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 1 + 8
    _secret_free(tmp_path / "run", tmp_path / "p.csv", secrets=("pw-HTTP-1", "TOKEN-2", "TOKEN-3"))


def test_the_cache_filled_from_local_files_serves_s3_and_a_changed_object_misses(s3, tmp_path, capsys, data):
    from seqvision.models.backbones import build_backbone

    torch.save(build_backbone("tiny_cnn", weights="none").trunk.state_dict(), tmp_path / "tiny.pth")
    weights = [*TINY[:3], str(tmp_path / "tiny.pth"), *TINY[4:]]
    extract = ["extract", "--out", str(tmp_path / "cache"), *weights, "--num-workers", "0", "--precision", "32", "--no-progress"]
    manifest = f"s3://{BUCKET}/data/manifest.csv"
    assert main([*extract, "--data", str(data), "--content-hash"]) == 0
    assert "extracted 22 images" in capsys.readouterr().out
    train = _train(manifest, tmp_path / "run", "--freeze", "--cache", str(tmp_path / "cache"), "--feature-precision", "32")
    train[train.index("--weights") + 1] = str(tmp_path / "tiny.pth")
    assert main(train) == 0
    assert "feature cache: 22 images reused, 0 computed" in capsys.readouterr().out
    changed = tmp_path / "other.png"
    write_image(changed, 99)
    s3.put_object(Bucket=BUCKET, Key="data/left/s1/f0.png", Body=changed.read_bytes())
    try:
        assert main([*extract, "--data", manifest]) == 0
        out = capsys.readouterr().out
        assert "extracted 1 images" in out and "21 already cached" in out
    finally:
        s3.put_object(Bucket=BUCKET, Key="data/left/s1/f0.png", Body=(data / "left" / "s1" / "f0.png").read_bytes())


def test_a_folder_given_as_an_s3_url_is_listed_like_the_local_folder(s3, data):
    local = {s.id: (s.label, [f.path.relative_to(data).as_posix() for f in s.frames]) for s in discover(data)}
    remote = discover(f"s3://{BUCKET}/data/")  # one listing; its manifest.csv is no image and is ignored
    prefix = f"s3://{BUCKET}/data/"
    assert {s.id: (s.label, [url_of(f.path).removeprefix(prefix) for f in s.frames]) for s in remote} == local
    assert load_image(remote[0].frames[0].path).shape == (3, 16, 16)
    with pytest.raises(DataError, match=f"s3://{BUCKET}/nothing-here/: no samples found"):
        discover(f"s3://{BUCKET}/nothing-here/")


def test_a_video_on_s3_decodes_the_local_files_frames_through_ranged_reads(s3, tmp_path):
    from test_data_video import write_video

    from seqvision.data.video import probe_video, read_frames

    video = write_video(tmp_path / "v.mp4", frames=30)
    s3.put_object(Bucket=BUCKET, Key="clips/v.mp4", Body=video.read_bytes())
    url = to_path(f"s3://{BUCKET}/clips/v.mp4")
    assert probe_video(url) == probe_video(video)
    times = [0.0, 1.4, 2.9]  # seeks: PyAV reads the index and the packets it needs through fsspec's ranges
    remote, _ = read_frames(url, times, 10.0)
    assert all(torch.equal(a, b) for a, b in zip(remote, read_frames(video, times, 10.0)[0]))
    with pytest.raises(BadFileError, match=f"s3://{BUCKET}/clips/gone.mp4: object does not exist"):
        probe_video(to_path(f"s3://{BUCKET}/clips/gone.mp4"))


# --------------------------------------------------------------------------------------------- faults


def test_a_missing_object_is_one_line_naming_it_or_a_reported_skip(s3, tmp_path, capsys, data):
    s3.delete_object(Bucket=BUCKET, Key="data/right/s2/f1.png")
    try:
        assert main(_train(f"s3://{BUCKET}/data/manifest.csv", tmp_path / "run")) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "sample 'right/s2'" in err[0] and f"s3://{BUCKET}/data/right/s2/f1.png" in err[0]
        assert "does not exist" in err[0] and "--on-bad-image skip" in err[0]
        assert main(_train(f"s3://{BUCKET}/data/manifest.csv", tmp_path / "run2", "--on-bad-image", "skip")) == 0
        err = capsys.readouterr().err
        assert f"s3://{BUCKET}/data/right/s2/f1.png: object does not exist" in err and "not silently dropped" in err
    finally:
        s3.put_object(Bucket=BUCKET, Key="data/right/s2/f1.png", Body=(data / "right" / "s2" / "f1.png").read_bytes())


def test_wrong_credentials_are_one_line_and_never_printed(s3, tmp_path, capsys, monkeypatch):
    from moto.core.authorization import enable_iam_authentication

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    with enable_iam_authentication():  # moto checks signatures from here on: our key is unknown to it
        assert main(_train(f"s3://{BUCKET}/data/manifest.csv", tmp_path / "run")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"s3://{BUCKET}/data/manifest.csv: access denied" in err[0]
    assert "wrong-secret-value" not in err[0] and SECRET not in err[0]


def test_a_slow_server_times_out_into_one_line_and_transient_errors_are_retried(http, tmp_path, capsys, monkeypatch, data):
    base, server = http
    monkeypatch.setenv("SEQVISION_REMOTE_TIMEOUT", "0.2")
    monkeypatch.setenv("SEQVISION_REMOTE_RETRIES", "1")
    server.slow.add("/data/left/s0/f1.png")
    server.delay = 1.5
    started = time.monotonic()
    with pytest.raises(BadFileError, match=r"left/s0/f1.png: no answer within 0.2 s \(after 2 tries\)"):
        load_image(to_path(f"{base}/data/left/s0/f1.png"))
    assert time.monotonic() - started < 1.5  # two timeouts and one back-off, never the server's pace
    (tmp_path / "m.csv").write_text(_manifest(data, lambda rel: f"{base}/data/{rel}"))
    assert main(_train(tmp_path / "m.csv", tmp_path / "run")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sample 'left/s0'" in err[0] and "no answer within 0.2 s" in err[0]
    server.slow.clear()
    server.flaky.add("/data/left/s0/f0.png")  # 503 once: the retry reads it
    assert load_image(to_path(f"{base}/data/left/s0/f0.png")).shape == (3, 16, 16)
    server.cut.add("/data/left/s0/f0.png")  # a connection cut mid-read: retried, never decoded half
    assert torch.equal(load_image(to_path(f"{base}/data/left/s0/f0.png")), load_image(data / "left" / "s0" / "f0.png"))
    assert not server.flaky and not server.cut


def test_pack_reads_a_manifest_on_s3_into_shards_that_hold_the_local_bytes(s3, tmp_path, capsys, data):
    """seqvision pack from S3: the same samples and bytes as the local folder, its index free of credentials;
    a missing object stops the pack with one line naming the sample and the URL, and no partial pack."""
    out = tmp_path / "pack"
    assert main(["pack", f"s3://{BUCKET}/data/manifest.csv", "--out", str(out)]) == 0
    assert "packed 8 samples" in capsys.readouterr().out
    _secret_free(out)
    packed = {s.id: [load_image(f.path) for f in s.frames] for s in discover(out)}
    local = {s.id: [load_image(f.path) for f in s.frames] for s in discover(data)}
    assert packed.keys() == local.keys()
    assert all(torch.equal(a, b) for sid in local for a, b in zip(packed[sid], local[sid], strict=True))
    s3.put_object(Bucket=BUCKET, Key="gone/manifest.csv", Body=b"sample_id,label,path\na,left,../data/left/s0/f0.png\nb,right,nothing.png\n")
    assert main(["pack", f"s3://{BUCKET}/gone/manifest.csv", "--out", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'b'" in err and f"s3://{BUCKET}/gone/nothing.png" in err and SECRET not in err
    assert not list((tmp_path / "bad").glob("*.tar"))


def _delete_an_image_at_the_first_training_read(monkeypatch, s3) -> list[str]:
    """From now on, the first read of a training sample deletes from S3 the last image of another sample of
    the same split (one still to come this epoch); returns the list that then holds that image's URL."""
    gone: list[str] = []
    get = SequenceDataset.__getitem__

    def delete_another(self, index):
        if self.train and not gone:
            later = next(s for i, s in enumerate(self.samples) if i != index)
            gone.append(url_of(later.frames[-1].path))
            s3.delete_object(Bucket=BUCKET, Key=gone[0].removeprefix(f"s3://{BUCKET}/"))
        return get(self, index)

    monkeypatch.setattr(SequenceDataset, "__getitem__", delete_another)
    return gone


def test_an_object_deleted_during_the_epoch_is_one_line_naming_it_or_a_reported_skip(s3, tmp_path, capsys, monkeypatch, data):
    """The object is there when the run starts and indexes; it goes when the epoch's first sample is read,
    before its own sample's turn: the run stops on one line naming it, or (skip) the epoch says what it left out."""
    gone = _delete_an_image_at_the_first_training_read(monkeypatch, s3)

    def restore():
        key = gone.pop().removeprefix(f"s3://{BUCKET}/data/")
        s3.put_object(Bucket=BUCKET, Key=f"data/{key}", Body=(data / key).read_bytes())

    try:
        code = main(_train(f"s3://{BUCKET}/data/manifest.csv", tmp_path / "run"))
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and f"{gone[0]}: object does not exist" in lines[0], lines
    finally:
        restore()
    # --on-bad-image skip, one epoch of the training dataset (the CLI's summary of skips is tested above)
    samples = discover(f"s3://{BUCKET}/data/manifest.csv")
    base = SequenceDataset(samples, ClipTransform(Preprocessing(image_size=16, resize_size=16)), train=True, on_bad_image="skip")
    try:
        batches = list(torch.utils.data.DataLoader(base, batch_size=3, collate_fn=collate))
        said = [m for b in batches for m in b.skipped]
        assert len(said) == 1 and f"{gone[0]}: object does not exist" in said[0]
        assert sorted(i for b in batches for i in b.sample_ids + b.left_out) == sorted(s.id for s in samples)  # none lost unsaid
    finally:
        restore()


def test_a_slow_s3_endpoint_times_out_into_one_line_and_reads_again_once_it_answers(s3, s3_endpoint, tmp_path, capsys, monkeypatch, data):
    proxy = _SlowProxy(s3_endpoint[0])
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
    monkeypatch.setenv("SEQVISION_REMOTE_TIMEOUT", "0.2")
    monkeypatch.setenv("SEQVISION_REMOTE_RETRIES", "1")
    s3fs.S3FileSystem.clear_instance_cache()
    url = f"s3://{BUCKET}/data/left/s0/f1.png"
    try:
        proxy.delay = 10.0
        started = time.monotonic()
        with pytest.raises(BadFileError, match=rf"{url}: no answer within 0.2 s \(after 2 tries\)"):
            load_image(to_path(url))
        # two timeouts and one back-off, never the server's pace: s3fs's and botocore's own retries of a
        # timeout (5 and 1 more by default) would make it 12 timeouts and their back-offs (15 s measured)
        assert time.monotonic() - started < 5.0
        (tmp_path / "m.csv").write_text(_manifest(data, lambda rel: f"s3://{BUCKET}/data/{rel}"))
        # from the CLI, batches of one sample (every sample of a batch is read, each timing out, before the error is raised)
        assert main([*_train(tmp_path / "m.csv", tmp_path / "run"), "--batch-size", "1"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"s3://{BUCKET}/data/" in err[0] and "no answer within 0.2 s" in err[0], err
        proxy.delay = 0.0
        assert torch.equal(load_image(to_path(url)), load_image(data / "left" / "s0" / "f1.png"))
    finally:
        proxy.close()
