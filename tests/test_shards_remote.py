"""A pack given by URL (issue #27, part 2): the pack folder written locally, uploaded as it is to an S3 server on
loopback (moto's, the fixtures of test_data_remote), then read from ``s3://.../pack/`` by train, evaluate,
predict and extract with the local pack's results (train and predict also from ``http://127.0.0.1:PORT/pack/``,
a static server answering Range requests; a pack of videos by URL decodes and predicts as the local pack); the
feature cache filled from the local files serves it; a shard's members come from a few ranged reads, not a
request each (also in DataLoader workers started by fork); a missing index, a missing shard and a truncated
shard are one line naming the object; no credential reaches what the commands write."""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import re
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from seqvision.cli import main
from seqvision.data.dataset import SequenceDataset
from seqvision.data.discovery import discover
from seqvision.data.images import load_image
from seqvision.data.packs import INDEX_NAME, is_pack, member_of
from seqvision.data.remote import url_of
from seqvision.data.shard_loader import ShardStream
from seqvision.data.transforms import ClipTransform, Preprocessing
from seqvision.errors import ConfigError, DataError

s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto.server")
from test_data_remote import BUCKET, KEY_ID, SECRET, TINY, _secret_free, _train, data, s3, s3_endpoint  # noqa: E402,F401 - fixtures

PACK = f"s3://{BUCKET}/pack/"


@pytest.fixture(scope="module")
def local_pack(data, s3_endpoint, tmp_path_factory) -> Path:
    """``data`` packed into 3 shards, the folder uploaded to ``s3://frames/pack/`` file by file."""
    out = tmp_path_factory.mktemp("packs") / "pack"
    assert main(["pack", str(data), "--out", str(out), "--shard-size", "8KB"]) == 0
    _upload(s3_endpoint[1], out, "pack")
    return out


def _upload(client, folder: Path, prefix: str, skip: tuple[str, ...] = ()) -> None:
    for file in folder.iterdir():
        if file.name not in skip:
            client.put_object(Bucket=BUCKET, Key=f"{prefix}/{file.name}", Body=file.read_bytes())


def _shard_names(folder: Path) -> list[str]:
    return [s["name"] for s in json.loads((folder / "index.json").read_text())["shards"]]


def _preds(path: Path) -> dict[str, list[str]]:
    with open(path) as fh:
        return {row["sample"]: [row[k] for k in ("prediction", "left", "right")] for row in csv.DictReader(fh)}


def _count_gets(monkeypatch) -> list[tuple[str, int, int]]:
    """Every ranged GET that s3fs's files make from now on: (key, start, end)."""
    gets: list[tuple[str, int, int]] = []
    fetch = s3fs.core.S3File._fetch_range

    def counted(self, start, end):
        gets.append((self.key, start, end))
        return fetch(self, start, end)

    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", counted)
    return gets


def test_train_evaluate_predict_and_extract_read_a_pack_on_s3_as_the_local_pack(s3, local_pack, data, tmp_path, capsys):
    from seqvision.models.backbones import build_backbone

    assert is_pack(PACK) and is_pack(PACK.rstrip("/")) and not is_pack(f"s3://{BUCKET}/data/")
    torch.save(build_backbone("tiny_cnn", weights="none").trunk.state_dict(), tmp_path / "tiny.pth")
    weights = [*TINY[:3], str(tmp_path / "tiny.pth"), *TINY[4:]]
    train = _train(PACK, tmp_path / "run")
    train[train.index("--weights") + 1] = str(tmp_path / "tiny.pth")
    assert main(train) == 0
    assert "best checkpoint:" in capsys.readouterr().out
    split = json.loads((tmp_path / "run" / "splits.json").read_text())["splits"]
    assert sorted(split) == sorted(s.id for s in discover(data))
    ckpt = str(tmp_path / "run" / "best.ckpt")
    assert main(["evaluate", ckpt, "--data", PACK, "--out", str(tmp_path / "ev"), "--diagnostics", "off"]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["num_samples"] == 8
    for name, source in (("s3", PACK), ("local", str(local_pack))):
        assert main(["predict", ckpt, source, "--out", str(tmp_path / f"{name}.csv"), "--precision", "32"]) == 0
    assert _preds(tmp_path / "s3.csv") == _preds(tmp_path / "local.csv") and len(_preds(tmp_path / "s3.csv")) == 8
    # the cache filled from the local files (by content) serves the pack on S3: the index's digests, no image read
    extract = ["extract", "--out", str(tmp_path / "cache"), *weights, "--num-workers", "0", "--precision", "32", "--no-progress"]
    assert main([*extract, "--data", str(data), "--content-hash"]) == 0
    capsys.readouterr()
    assert main([*extract, "--data", PACK]) == 0
    out = capsys.readouterr().out
    assert "extracted 0 images" in out and "22 already cached" in out
    _secret_free(tmp_path / "run", tmp_path / "ev", tmp_path / "s3.csv")


def test_a_shards_members_come_from_a_few_ranged_reads_also_in_forked_workers(s3, local_pack, monkeypatch):
    samples = discover(PACK)
    gets = _count_gets(monkeypatch)
    images = [load_image(f.path) for s in samples for f in s.frames]  # in packing order, as extraction reads
    local = [load_image(f.path) for s in discover(local_pack) for f in s.frames]
    assert len(images) == 22 and all(torch.equal(a, b) for a, b in zip(images, local, strict=True))
    assert len(gets) == len(_shard_names(local_pack)) == 3  # one block of each shard, not 22 GETs
    assert all(url_of(f.path).startswith(PACK) for s in samples for f in s.frames)
    # DataLoader workers started by fork after this process opened the shards: their own files, each sample once
    base = SequenceDataset(samples, ClipTransform(Preprocessing(image_size=16, resize_size=16)))
    stream = ShardStream(base, batch_size=2, seed=1)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2, multiprocessing_context="fork")
    batches = list(loader)
    assert sorted(i for b in batches for i in b.sample_ids) == sorted(s.id for s in samples)
    assert not [e for b in batches for e in b.errors]


def test_a_missing_index_shard_or_a_truncated_shard_on_s3_is_one_line_naming_it(s3, local_pack, tmp_path, capsys):
    _upload(s3, local_pack, "noindex", skip=("index.json",))
    assert main(_train(f"s3://{BUCKET}/noindex/", tmp_path / "run")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"s3://{BUCKET}/noindex/index.json does not exist" in err[0], err
    with pytest.raises(DataError, match=f"s3://{BUCKET}/noindex/index.json: the pack's index does not exist"):
        from seqvision.data.packs import read_index

        read_index(f"s3://{BUCKET}/noindex/")
    # a shard cut inside the last image of one of its samples
    index = json.loads((local_pack / "index.json").read_text())
    cut = _shard_names(local_pack)[1]
    victim = next(e for e in index["samples"] if index["shards"][e["shard"]]["name"] == cut)
    _upload(s3, local_pack, "cut", skip=(cut,))
    s3.put_object(Bucket=BUCKET, Key=f"cut/{cut}", Body=(local_pack / cut).read_bytes()[: victim["members"][-1]["offset"] + 10])
    assert main(_train(f"s3://{BUCKET}/cut/", tmp_path / "run2", "--num-workers", "0")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and cut in err[0] and "truncated" in err[0] and repr(victim["id"]) in err[0], err
    assert f"s3://{BUCKET}/cut/{cut}/" in err[0] and SECRET not in err[0] and KEY_ID not in err[0]
    # --on-bad-image skip: the images past the cut are left out and said, no sample lost unsaid
    samples = discover(f"s3://{BUCKET}/cut/")
    base = SequenceDataset(samples, ClipTransform(Preprocessing(image_size=16, resize_size=16)), on_bad_image="skip")
    batches = list(ShardStream(base, batch_size=3, seed=0))
    assert sorted(i for b in batches for i in b.sample_ids + b.left_out) == sorted(s.id for s in samples)
    said = [m for b in batches for m in b.skipped]
    assert said and all(cut in m for m in said) and any(repr(victim["id"]) in m and "truncated" in m for m in said)
    s3.delete_object(Bucket=BUCKET, Key=f"cut/{cut}")  # now missing altogether
    samples = discover(f"s3://{BUCKET}/cut/")
    base = SequenceDataset(samples, ClipTransform(Preprocessing(image_size=16, resize_size=16)))
    errors = [e for b in ShardStream(base, batch_size=3, seed=0) for e in b.errors]
    assert errors and all(f"shard {cut} is missing" in e and f"s3://{BUCKET}/cut/" in e for e in errors)
    assert member_of(samples[0].frames[0].path) is not None


def test_pack_writes_a_local_folder_and_refuses_a_url_as_out(data, tmp_path, capsys):
    with pytest.raises(ConfigError, match="a pack is written to a local folder; upload that folder"):
        from seqvision.data.pack_writer import pack

        pack(data, f"s3://{BUCKET}/elsewhere/")
    assert main(["pack", str(data), "--out", f"file://{tmp_path}/viafile"]) == 0
    assert is_pack(tmp_path / "viafile") and is_pack(f"file://{tmp_path}/viafile")


def test_threads_reading_shards_while_one_is_closed_for_another_read_the_right_bytes(s3, local_pack, monkeypatch):
    """Extraction decodes with threads of one process: with one shard kept open, each thread's read of another
    shard closes the one the others read; they open it again and read the packed bytes, never an error."""
    from concurrent.futures import ThreadPoolExecutor

    from seqvision.data import remote_shards

    monkeypatch.setattr(remote_shards, "OPEN", 1)
    paths = [f.path for s in discover(PACK) for f in s.frames] * 3
    local = {(f.path.parent.name, f.path.name): f.path for s in discover(local_pack) for f in s.frames}  # the same shard names
    with ThreadPoolExecutor(4) as pool:
        members = list(pool.map(lambda p: member_of(p).read(), paths[::-1]))
    assert all(data == member_of(local[p.parent.name, p.name]).read() for p, data in zip(paths[::-1], members))


class _RangeHandler(SimpleHTTPRequestHandler):
    """A folder served as static servers and CDNs serve it (http.server alone answers a Range request with 200
    and the whole file, which fsspec refuses past byte 0): HEAD gives Content-Length and Accept-Ranges; a GET with ``Range:
    bytes=a-b`` is answered 206 with those bytes and Content-Range (416 past the end). ``server.ranges``: the
    (path, first byte, status) of each ranged GET."""

    def send_head(self):
        found = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "").strip())
        path = self.translate_path(self.path)
        if found is None or not os.path.isfile(path):  # no range (or a form fsspec never asks): the whole file, 200
            return super().send_head()
        size = os.path.getsize(path)
        start = int(found.group(1))
        end = min(int(found.group(2) or size - 1), size - 1)
        status = 206 if start < size else 416
        self.server.ranges.append((self.path, start, status))
        self.send_response(status)
        if status == 416:
            self.send_header("Content-Range", f"bytes */{size}")
            self.end_headers()
            return None
        with open(path, "rb") as fh:
            fh.seek(start)
            body = fh.read(end - start + 1)
        for name, value in (("Content-Type", self.guess_type(path)), ("Content-Range", f"bytes {start}-{end}/{size}"),
                            ("Content-Length", str(len(body)))):
            self.send_header(name, value)
        self.end_headers()
        return io.BytesIO(body)

    def end_headers(self):
        self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(scope="module")
def http_packs(local_pack):
    """``local_pack``'s folder served on ``http://127.0.0.1:PORT/`` (the pack at ``/pack/``); yields (base URL, server)."""
    pytest.importorskip("aiohttp")  # fsspec's http:// backend
    with ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_RangeHandler, directory=str(local_pack.parent))) as server:
        server.ranges = []
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield f"http://127.0.0.1:{server.server_address[1]}", server
        server.shutdown()  # returns once serve_forever has


class _WholeFileHandler(SimpleHTTPRequestHandler):
    """http.server as it is: a Range request is answered 200 with the whole file."""

    def log_message(self, *args):  # quiet
        pass


def test_a_server_without_range_requests_is_one_line_saying_so(local_pack, monkeypatch):
    pytest.importorskip("aiohttp")  # fsspec's http:// backend
    from seqvision.data import remote_shards
    from seqvision.errors import BadFileError

    monkeypatch.setattr(remote_shards, "BLOCK", 1024)  # the members past a shard's first KB need a ranged GET
    with ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_WholeFileHandler, directory=str(local_pack.parent))) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            frames = [f for s in discover(f"http://127.0.0.1:{server.server_address[1]}/pack/") for f in s.frames]
            with pytest.raises(BadFileError) as err:
                for frame in frames:
                    load_image(frame.path)
        finally:
            server.shutdown()
    message = str(err.value)
    assert "does not answer byte-range requests" in message and "/pack/" in message and "\n" not in message


@pytest.fixture(scope="module")
def _runs() -> dict:
    return {}


@pytest.fixture
def http_run(_runs, http_packs, tmp_path_factory, monkeypatch) -> tuple[Path, list]:
    """A run trained from ``http://127.0.0.1:PORT/pack/`` with 4 KB blocks (the 8-16 KB shards' blocks past byte 0
    are ranged GETs too): (its folder, the ranged GETs it made). Trained once per module, in the first test that
    asks (a function's fixture: after the home is isolated); the video test predicts with it too."""
    from seqvision.data import remote_shards

    base, server = http_packs
    monkeypatch.setenv("SEQVISION_REMOTE_TIMEOUT", "5")
    monkeypatch.setattr(remote_shards, "BLOCK", 4096)
    if "http" not in _runs:
        out = tmp_path_factory.mktemp("http") / "run"
        del server.ranges[:]
        assert main(_train(f"{base}/pack/", out)) == 0
        _runs["http"] = out, server.ranges[:]
    return _runs["http"]


def test_train_and_predict_read_a_pack_over_http_by_ranged_gets_as_the_local_pack(http_packs, http_run, local_pack, tmp_path):
    base, server = http_packs
    pack_url = f"{base}/pack/"
    assert is_pack(pack_url) and [s.id for s in discover(pack_url)] == [s.id for s in discover(local_pack)]
    run, ranges = http_run
    for name, source in (("http", pack_url), ("local", str(local_pack))):
        assert main(["predict", str(run / "best.ckpt"), source, "--out", str(tmp_path / f"{name}.csv"), "--precision", "32"]) == 0
    assert _preds(tmp_path / "http.csv") == _preds(tmp_path / "local.csv") and len(_preds(tmp_path / "http.csv")) == 8
    assert {path for path, _, _ in ranges} == {f"/pack/{name}" for name in _shard_names(local_pack)}
    assert all(status == 206 for _, _, status in ranges) and any(start > 0 for _, start, _ in ranges)
    # a web server serving the folder as another user reads the index as it reads the shards (not 0600 alone)
    modes = {(local_pack / name).stat().st_mode & 0o777 for name in [INDEX_NAME, *_shard_names(local_pack)]}
    assert len(modes) == 1, modes


def test_a_packed_video_by_url_decodes_the_local_packs_frames_and_predicts_as_it(s3, http_run, tmp_path, monkeypatch):
    pytest.importorskip("av")
    from test_data_video import write_video

    from seqvision.data import remote_shards
    from seqvision.data.video import probe_video, read_frames

    for label in ("left", "right"):
        (tmp_path / "videos" / label).mkdir(parents=True)
    for i in range(3):
        write_video(tmp_path / "videos" / "left" / f"l{i}.mp4", frames=12)
        write_video(tmp_path / "videos" / "right" / f"r{i}.mp4", frames=8 + i, gop=3)
    assert main(["pack", str(tmp_path / "videos"), "--out", str(tmp_path / "vpack"), "--shard-size", "4KB"]) == 0
    _upload(s3, tmp_path / "vpack", "vpack")
    url = f"s3://{BUCKET}/vpack/"
    monkeypatch.setattr(remote_shards, "BLOCK", 1024)  # a video (~3 KB) spans blocks: PyAV's seeks cross them
    local, packed = discover(tmp_path / "vpack"), discover(url)
    assert [s.id for s in packed] == [s.id for s in local] and len(packed) == 6
    assert all(url_of(s.video.path).startswith(url) for s in packed)
    for a, b in zip(local, packed):
        info = probe_video(a.video.path)
        assert probe_video(b.video.path) == info
        times = [info.frame_time(i) for i in (0, 5, info.num_frames - 1)]
        frames = read_frames(b.video.path, times, info.fps)[0]
        assert len(frames) == 3 and all(torch.equal(x, y) for x, y in zip(read_frames(a.video.path, times, info.fps)[0], frames))
    # the run trained on the image pack predicts the videos (its clips' frames) alike from S3 and from the folder
    for name, source in (("s3", url), ("local", str(tmp_path / "vpack"))):
        assert main(["predict", str(http_run[0] / "best.ckpt"), source, "--out", str(tmp_path / f"{name}.csv"), "--precision", "32"]) == 0
    assert _preds(tmp_path / "s3.csv") == _preds(tmp_path / "local.csv") and len(_preds(tmp_path / "s3.csv")) == 6
