"""A pack given by URL (issue #27, part 2): the pack folder written locally, uploaded as it is to an S3 server on
loopback (moto's, the fixtures of test_data_remote), then read from ``s3://.../pack/`` by train, evaluate,
predict and extract with the local pack's results; the feature cache filled from the local files serves it;
a shard's members come from a few ranged reads, not a request each (also in DataLoader workers started by
fork); a missing index, a missing shard and a truncated shard are one line naming the object; no credential
reaches what the commands write."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from seqvision.cli import main
from seqvision.data.dataset import SequenceDataset
from seqvision.data.discovery import discover
from seqvision.data.images import load_image
from seqvision.data.packs import is_pack, member_of
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
