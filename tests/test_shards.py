"""Packed data (issue #27, parts 2 and 3): `seqvision pack` writes WebDataset-style tar shards and an
index; train, evaluate, predict and extract read a pack folder as DATA; training streams every sample
exactly once per epoch over processes x workers; bad shards are one line naming shard and sample; the
feature cache finds a packed image by its content."""

from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from conftest import fast_config, make_folder_dataset, write_image
from seqvision.cli import main
from seqvision.config import DataConfig, RunConfig, validate
from seqvision.data.dataset import SequenceDataset
from seqvision.data.discovery import discover
from seqvision.data.images import load_image
from seqvision.data.pack_writer import pack, parse_size
from seqvision.data.shard_loader import ShardStream, epoch_order, plan, shuffle_buffer, steps_per_epoch, stream_loader
from seqvision.data.transforms import ClipTransform, Preprocessing
from seqvision.errors import ConfigError, DataError
from seqvision.training.datamodule import prepare_data

TINY = ["--backbone", "tiny_cnn", "--weights", "none", "--image-size", "16", "--resize-size", "16"]


def _train(data, out, *extra):
    return ["train", "--data", str(data), "--out", str(out), *TINY, "--max-epochs", "1", "--batch-size", "3",
            "--hidden-size", "8", "--num-workers", "0", "--val-fraction", "0.25", "--test-fraction", "0", "--diagnostics", "off",
            "--accelerator", "cpu", "--no-progress", *extra]


def _pack(data, out, size="8KB", *extra):
    assert main(["pack", str(data), "--out", str(out), "--shard-size", size, *extra]) == 0
    return out


def _shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("shard-*.tar"))


def _batches_read(monkeypatch) -> list[list[str]]:
    """The sample ids of every training batch that a :class:`ShardStream` yields from now on, batch by batch."""
    read: list[list[str]] = []
    stream_iter = ShardStream.__iter__

    def spy(self):
        for batch in stream_iter(self):
            read.append(batch.sample_ids)
            yield batch

    monkeypatch.setattr(ShardStream, "__iter__", spy)
    return read


def _preds(path: Path) -> dict[str, list[str]]:
    with open(path) as fh:
        return {row["sample"]: [row[k] for k in ("prediction", "left", "right")] for row in csv.DictReader(fh)}


def test_pack_then_train_evaluate_predict_and_extract_read_the_pack(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "data", per_label=4)
    packed = _pack(data, tmp_path / "pack")
    assert "packed 8 samples into" in capsys.readouterr().out
    assert len(_shards(packed)) >= 3
    assert main(_train(packed, tmp_path / "run")) == 0
    assert "best checkpoint:" in capsys.readouterr().out
    split = json.loads((tmp_path / "run" / "splits.json").read_text())["splits"]
    assert sorted(split) == sorted(s.id for s in discover(data))  # the folder's sample ids, from the index
    ckpt = str(tmp_path / "run" / "best.ckpt")
    assert main(["evaluate", ckpt, "--data", str(packed), "--out", str(tmp_path / "ev"), "--diagnostics", "off"]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["num_samples"] == 8
    # the pack's images are the folder's bytes: the same predictions, sample by sample
    assert main(["predict", ckpt, str(packed), "--out", str(tmp_path / "pack.csv"), "--precision", "32"]) == 0
    assert main(["predict", ckpt, str(data), "--out", str(tmp_path / "folder.csv"), "--precision", "32"]) == 0
    from_pack, from_folder = _preds(tmp_path / "pack.csv"), _preds(tmp_path / "folder.csv")
    assert len(from_pack) == 8
    assert from_pack == {Path(k).relative_to(data).as_posix(): v for k, v in from_folder.items()}
    assert main(["extract", "--data", str(packed), "--out", str(tmp_path / "cache"), *TINY, "--num-workers", "0",
                 "--precision", "32", "--no-progress"]) == 0
    assert "extracted 22 images" in capsys.readouterr().out


def test_shards_are_webdataset_tars_of_the_original_bytes_and_the_index_locates_them(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_label=4)
    done = pack(data, tmp_path / "pack", shard_size=parse_size("8KB"))
    index = json.loads((tmp_path / "pack" / "index.json").read_text())
    assert done.samples == len(index["samples"]) == 8 and done.shards == len(index["shards"])
    assert sum(s["samples"] for s in index["shards"]) == 8
    originals = {s.id: s for s in discover(data)}
    for entry in index["samples"]:
        shard = tmp_path / "pack" / index["shards"][entry["shard"]]["name"]
        with tarfile.open(shard) as tar:
            names = tar.getnames()
            mine = [n for n in names if n.split(".")[0] == entry["key"]]
            # one sample's members are consecutive (WebDataset groups by key): images in order, then its JSON
            assert mine == [f"{entry['key']}.{n}.png" for n in range(len(entry["members"]))] + [f"{entry['key']}.json"]
            assert names[names.index(mine[0]) : names.index(mine[0]) + len(mine)] == mine
            for member, frame in zip(entry["members"], originals[entry["id"]].frames):
                info = tar.getmember(member["name"])
                assert (info.offset_data, info.size) == (member["offset"], member["size"])
                assert tar.extractfile(info).read() == frame.path.read_bytes()
            meta = json.loads(tar.extractfile(f"{entry['key']}.json").read())
            assert (meta["id"], meta["label"]) == (entry["id"], originals[entry["id"]].label)


def test_every_sample_once_per_epoch_over_ranks_and_workers_with_odd_shard_counts():
    for total, shards, batch in [(13, 5, 3), (9, 3, 4), (8, 7, 2), (21, 1, 5), (5, 5, 2), (4, 3, 4)]:
        names = [f"shard-{i * shards // total}" for i in range(total)]  # uneven: shards of 2 and 3 samples
        for epoch in (0, 1):
            order = epoch_order(names, epoch=epoch, seed=7, shuffle=True)
            assert sorted(order) == list(range(total))
            seen, steps = [], set()
            for rank in range(2):
                rank_batches = 0
                for worker in range(2):
                    share = plan(order, rank=rank, world=2, worker=worker, workers=2, batch_size=batch)
                    assert sum(share.batch_sizes) == len(share.samples)
                    assert all(1 <= n <= batch for n in share.batch_sizes)
                    seen.extend(share.samples)
                    rank_batches += len(share.batch_sizes)
                steps.add(rank_batches)
            assert sorted(seen) == list(range(total)), (total, shards, batch, epoch)  # none lost, none twice
            assert steps == {steps_per_epoch(total, world=2, batch_size=batch)}  # DDP: every rank steps alike
    # 1001 over 8 processes, batch size 1: equal step counts, each batch of one sample, cannot read every
    # sample once (125 steps leave one over, 126 leave seven processes a batch short): the error says what to change
    with pytest.raises(DataError, match=r"1001 training samples over 8 processes .*--batch-size 2 or more.* 1000 or 1008 "):
        steps_per_epoch(1001, world=8, batch_size=1)
    with pytest.raises(DataError, match=r"3 training samples over 4 processes: .*at most 3 processes"):
        steps_per_epoch(3, world=4, batch_size=2)
    assert steps_per_epoch(1000, world=8, batch_size=1) == 125
    order = epoch_order([f"shard-{i // 40}" for i in range(1001)], epoch=0, seed=1, shuffle=True)
    shares = [plan(order, rank=r, world=8, worker=w, workers=2, batch_size=2) for r in range(8) for w in range(2)]
    assert sorted(i for s in shares for i in s.samples) == list(range(1001))
    assert {len(shares[2 * r].batch_sizes) + len(shares[2 * r + 1].batch_sizes) for r in range(8)} == {63}
    drawn = list(shuffle_buffer(list(range(50)), 8, __import__("random").Random(0)))
    assert sorted(drawn) == list(range(50)) and drawn != list(range(50))


def test_a_real_dataloader_with_two_workers_per_rank_reads_each_packed_sample_once(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_label=5, lengths=(1, 2))
    pack(data, tmp_path / "pack", shard_size=5000)  # 10 samples in an odd number of shards
    samples = discover(tmp_path / "pack")
    assert len({s.frames[0].path.parent for s in samples}) % 2 == 1
    base = SequenceDataset(samples, ClipTransform(Preprocessing(image_size=16, resize_size=16)))
    epochs: list[list[str]] = [[], []]
    for rank in range(2):
        stream = ShardStream(base, batch_size=2, seed=1, rank=rank, world=2)
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2, persistent_workers=True)
        for epoch in range(2):
            batches = list(loader)
            assert len(batches) == len(stream)
            epochs[epoch].extend(i for b in batches for i in b.sample_ids)
    for ids in epochs:
        assert sorted(ids) == sorted(s.id for s in samples)
    assert epochs[0] != epochs[1]  # reshuffled each epoch
    stream = ShardStream(base, batch_size=2, seed=1)
    list(stream)
    second = [b.sample_ids for b in stream]
    assert [b.sample_ids for b in ShardStream(base, batch_size=2, seed=1, epoch=1)] == second  # a resumed run's epoch


def test_a_truncated_or_missing_shard_is_one_line_naming_shard_and_sample(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "data", per_label=4)
    packed = _pack(data, tmp_path / "pack")
    index = json.loads((packed / "index.json").read_text())
    cut = _shards(packed)[1]
    victim = next(e for e in index["samples"] if index["shards"][e["shard"]]["name"] == cut.name)
    cut.write_bytes(cut.read_bytes()[: victim["members"][-1]["offset"] + 10])  # cut inside its last image
    assert main(_train(packed, tmp_path / "run")) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and cut.name in err and "truncated" in err and repr(victim["id"]) in err
    # --on-bad-image skip: the image is left out and said, never a silently shorter epoch
    samples = discover(packed)
    base = SequenceDataset(samples, ClipTransform(Preprocessing(image_size=16, resize_size=16)), on_bad_image="skip")
    batches = list(ShardStream(base, batch_size=3, seed=0))
    assert sorted(i for b in batches for i in b.sample_ids + b.left_out) == sorted(s.id for s in samples)
    said = [m for b in batches for m in b.skipped]  # every image past the cut: the victim's last one and on
    assert said and all(cut.name in m and "truncated" in m for m in said)
    assert any(m.startswith(f"sample {victim['id']!r}: image ") for m in said)
    assert victim["id"] in [i for b in batches for i in b.sample_ids]  # its images before the cut are used
    cut.unlink()
    base.on_bad_image = "error"
    errors = [e for b in ShardStream(base, batch_size=3, seed=0) for e in b.errors]
    assert errors and all(f"shard {cut.name} is missing" in e for e in errors)


def test_a_corrupt_image_in_a_shard_names_the_sample_and_member(tmp_path):
    data = make_folder_dataset(tmp_path / "data")
    pack(data, tmp_path / "pack", shard_size=10**9)
    samples = discover(tmp_path / "pack")
    member = samples[2].frames[1].path
    entry = json.loads((tmp_path / "pack" / "index.json").read_text())["samples"][2]["members"][1]
    with open(member.parent, "r+b") as fh:  # garbage of the same length over the PNG's bytes
        fh.seek(entry["offset"])
        fh.write(b"\x00" * entry["size"])
    item = SequenceDataset(samples, ClipTransform(Preprocessing(image_size=16, resize_size=16)))[2]
    assert samples[2].id in item["error"] and f"{member.parent.name}/{member.name}" in item["error"]
    assert torch.equal(load_image(samples[2].frames[0].path), load_image(discover(data)[2].frames[0].path))


def test_group_aware_split_on_packed_data_matches_the_manifest_it_came_from(tmp_path):
    rows = ["sample_id,label,path,group"]
    for n in range(12):
        label = "left" if n % 2 else "right"
        for t in range(2):
            image = write_image(tmp_path / "img" / f"s{n}_{t}.png", 40 + 150 * (n % 2) + t)
            rows.append(f"s{n},{label},{image},obj{n // 3}")
    manifest = tmp_path / "data.csv"
    manifest.write_text("\n".join(rows) + "\n")
    pack(manifest, tmp_path / "pack", shard_size=parse_size("4KB"))
    for data in (manifest, tmp_path / "pack"):
        cfg = fast_config(data)
        cfg.data.val_fraction, cfg.data.test_fraction = 0.25, 0.25
        prepared = prepare_data(cfg.data, seed=3)
        by_group: dict[str, set[str]] = {}
        for split, samples in prepared.splits.items():
            for s in samples:
                by_group.setdefault(s.group, set()).add(split)
        assert len(by_group) == 4 and all(len(splits) == 1 for splits in by_group.values())
        assignment = {s.id: split for split, samples in prepared.splits.items() for s in samples}
        if data == manifest:
            expected = assignment
    assert assignment == expected  # the same split from the pack's index as from the manifest
    regrouped = discover(tmp_path / "pack", group_by=r"^s\d")  # --group-by on a pack: a regex on the names
    assert {s.group for s in regrouped} == {"s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9"}


def test_the_cache_filled_from_the_folder_serves_the_pack_and_a_changed_image_misses(tmp_path, capsys):
    from seqvision.models.backbones import build_backbone

    data = make_folder_dataset(tmp_path / "data", per_label=4)
    torch.save(build_backbone("tiny_cnn", weights="none").trunk.state_dict(), tmp_path / "tiny.pth")
    weights = [*TINY[:3], str(tmp_path / "tiny.pth"), *TINY[4:]]
    extract = ["extract", "--out", str(tmp_path / "cache"), *weights, "--num-workers", "0", "--precision", "32", "--no-progress"]
    assert main([*extract, "--data", str(data), "--content-hash"]) == 0
    assert "extracted 22 images" in capsys.readouterr().out
    packed = _pack(data, tmp_path / "pack")
    capsys.readouterr()
    assert main([*extract, "--data", str(packed)]) == 0
    out = capsys.readouterr().out
    assert "extracted 0 images" in out and "22 already cached" in out
    write_image(data / "left" / "s1" / "f0.png", 99)  # other pixels: the repacked member misses, the rest hit
    _pack(data, packed)  # the same source and options: a re-run replaces the pack
    capsys.readouterr()
    assert main([*extract, "--data", str(packed)]) == 0
    out = capsys.readouterr().out
    assert "extracted 1 images" in out and "21 already cached" in out
    train = _train(packed, tmp_path / "run", "--freeze", "--cache", str(tmp_path / "cache"), "--feature-precision", "32")
    train[train.index("--weights") + 1] = str(tmp_path / "tiny.pth")
    assert main(train) == 0
    assert "feature cache: 22 images reused, 0 computed" in capsys.readouterr().out


def test_pack_refuses_bad_options_and_another_pack_and_leaves_nothing_partial(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "data")
    for bad in ("1XB", "-3MB", "0", "big"):
        with pytest.raises(ConfigError, match="--shard-size"):
            parse_size(bad)
    assert parse_size("1GB") == 10**9 and parse_size("2KiB") == 2048 and parse_size("512") == 512
    assert main(["pack", str(data), "--out", str(tmp_path / "p"), "--shard-size", "lots"]) == 1
    assert "--shard-size 'lots' is not a size" in capsys.readouterr().err
    packed = _pack(data, tmp_path / "pack")
    before = sorted(p.name for p in packed.iterdir())
    other = make_folder_dataset(tmp_path / "other", per_label=2)
    assert main(["pack", str(other), "--out", str(packed)]) == 1
    assert "holds another pack" in capsys.readouterr().err and sorted(p.name for p in packed.iterdir()) == before
    (other / "left" / "s1" / "f9.png").symlink_to(tmp_path / "nowhere.png")  # unreadable half way through
    assert main(["pack", str(other), "--out", str(packed), "--overwrite"]) == 1
    assert "'left/s1'" in capsys.readouterr().err
    assert sorted(p.name for p in packed.iterdir()) == before  # the old pack whole, no temporary left
    assert len(discover(packed)) == 6
    (other / "left" / "s1" / "f9.png").unlink()
    _pack(other, packed, "8KB", "--overwrite")
    assert len(discover(packed)) == 4 and not set(p.name for p in _shards(packed)) & set(before)
    with pytest.raises(ConfigError, match="is a pack already"):
        pack(packed, tmp_path / "again")
    (packed / "index.json").unlink()  # shards without their index: said, not "no samples"
    with pytest.raises(DataError, match="holds tar shards but no"):
        discover(packed)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    assert main(["pack", str(data), "--out", str(tmp_path / "junk")]) == 1
    assert "holds no pack" in capsys.readouterr().err


def test_a_packed_video_decodes_the_frames_of_the_file(tmp_path):
    pytest.importorskip("av")
    from test_data_video import write_video

    from seqvision.data.video import probe_video, read_frames

    for label in ("left", "right"):
        (tmp_path / "data" / label).mkdir(parents=True)
    write_video(tmp_path / "data" / "left" / "clip.mp4", frames=12)
    write_video(tmp_path / "data" / "right" / "other.mp4", frames=8)
    pack(tmp_path / "data", tmp_path / "pack")
    local, packed = discover(tmp_path / "data"), discover(tmp_path / "pack")
    assert [s.id for s in packed] == [s.id for s in local]
    for a, b in zip(local, packed):
        info_a, info_b = probe_video(a.video.path), probe_video(b.video.path)
        assert info_a == info_b
        times = [info_a.frame_time(i) for i in (0, 5, info_a.num_frames - 1)]
        frames_a, _ = read_frames(a.video.path, times, info_a.fps)
        frames_b, _ = read_frames(b.video.path, times, info_b.fps)
        assert all(torch.equal(x, y) for x, y in zip(frames_a, frames_b))


def test_a_resumed_run_on_a_pack_reads_its_own_epochs_order(tmp_path, monkeypatch):
    # Lightning builds the train loader before it restores the checkpoint: the resumed run must not
    # replay epoch 0's shard order in epoch 1
    data = make_folder_dataset(tmp_path / "data", per_label=4, lengths=(1,))
    packed = _pack(data, tmp_path / "pack", "1KB")  # a shard per sample: shard orders differ by epoch
    read = _batches_read(monkeypatch)
    assert main([*_train(packed, tmp_path / "whole"), "--max-epochs", "2"]) == 0
    uninterrupted = read[:]
    assert main(_train(packed, tmp_path / "run")) == 0
    assert read[len(uninterrupted):] == uninterrupted[: len(uninterrupted) // 2]  # epoch 0 alike
    del read[:]
    assert main([*_train(packed, tmp_path / "run"), "--resume", "--max-epochs", "2"]) == 0
    epoch0, epoch1 = uninterrupted[: len(uninterrupted) // 2], uninterrupted[len(uninterrupted) // 2 :]
    assert epoch0 != epoch1 and read == epoch1


def test_the_loader_starts_a_pass_at_its_first_batch_with_the_epoch_it_is_asked(tmp_path):
    # with workers too: Lightning calls iter() when it builds the loader, before a resumed run knows its epoch
    data = make_folder_dataset(tmp_path / "data", per_label=3, lengths=(1,))
    pack(data, tmp_path / "pack", shard_size=1000)
    base = SequenceDataset(discover(tmp_path / "pack"), ClipTransform(Preprocessing(image_size=16, resize_size=16)))

    def read(e):  # epoch e as two workers deal it
        return [b.sample_ids for b in stream_loader(base, batch_size=2, seed=3, num_workers=2, epoch=lambda: e)]

    expected = {e: read(e) for e in (1, 2, 5)}
    assert expected[1] != expected[2]
    epoch = [0]
    loader = stream_loader(base, batch_size=2, seed=3, num_workers=2, epoch=lambda: epoch[0])
    early = iter(loader)  # as Lightning's setup: no batch read yet
    epoch[0] = 1  # ... then the restore says which epoch this is
    assert [b.sample_ids for b in early] == expected[1]
    epoch[0] = 2
    assert [b.sample_ids for b in loader] == expected[2]  # the persistent workers' next epoch
    epoch[0] = 5
    assert [b.sample_ids for b in loader] == expected[5]  # an epoch they would not read next: new workers


def test_shuffle_buffer_mixes_a_shards_samples_and_1_reads_them_in_packing_order(tmp_path, monkeypatch, capsys):
    data = make_folder_dataset(tmp_path / "data", per_label=8, lengths=(1,))
    packed = _pack(data, tmp_path / "pack", "1GB")  # one shard: only the buffer can change the order
    batches = _batches_read(monkeypatch)
    assert main([*_train(packed, tmp_path / "run"), "--shuffle-buffer", "1"]) == 0
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["shuffle_buffer"] == 1  # recorded
    train = {k for k, v in json.loads((tmp_path / "run" / "splits.json").read_text())["splits"].items() if v == "train"}
    packing_order = [s.id for s in discover(packed) if s.id in train]
    assert [i for ids in batches for i in ids] == packing_order and len(packing_order) == 12
    base = SequenceDataset([s for s in discover(packed) if s.id in train], ClipTransform(Preprocessing(image_size=16, resize_size=16)))
    for seed in (0, 1):  # the same stream but a buffer of 16: mixed, every sample once
        mixed = [i for b in ShardStream(base, batch_size=3, seed=seed, buffer=16) for i in b.sample_ids]
        assert mixed != packing_order and sorted(mixed) == sorted(packing_order)
    capsys.readouterr()
    assert main([*_train(packed, tmp_path / "bad"), "--shuffle-buffer", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--shuffle-buffer 0 (data.shuffle_buffer) must be at least 1" in err[0]
    with pytest.warns(UserWarning, match="--shuffle-buffer 4 has no effect"):  # a folder: shuffled whole anyway
        validate(RunConfig(data=DataConfig(data=str(data), shuffle_buffer=4)))
