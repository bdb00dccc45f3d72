"""seqvision inspect, end to end from the CLI: folder, manifest and video data; leaks, problems, --strict,
--check-images; the HTML page in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from seqvision.cli import main
from seqvision.config import DataConfig

from conftest import write_image
from test_data_video import write_video
from test_evaluation_html_report import _chromium

EVIL = '<img src=x onerror="document.body.dataset.pwned=1">'


def _frames(folder: Path, n: int, seed: int) -> None:
    """``n`` 16x16 PNGs of distinct content (no two files of the data are copies unless a test makes one)."""
    for t in range(n):
        write_image(folder / f"f{t}.png", ((37 * seed + 11 * t) % 256, (5 * seed) % 256, (3 * t + seed) % 256))


def _folder(root: Path, *, labels=("left", "right"), per_label: int = 4, lengths=(2, 3, 4), offset: int = 0) -> Path:
    for li, label in enumerate(labels):
        for n in range(per_label):
            _frames(root / label / f"s{n}", lengths[n % len(lengths)], seed=offset + 10 * li + n)
    return root


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["inspect", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def _json(out: Path) -> dict:
    return json.loads((out / "inspect.json").read_text())


def _titles(report: dict) -> dict[str, int]:
    return {f["title"]: f["count"] for f in report["findings"]}


def test_folder_data_summary_split_and_page(tmp_path, capsys):
    data = _folder(tmp_path / "data")
    code, out, _ = _run(capsys, data, "--out", tmp_path / "out", "--seed", 3, "--strict")
    assert code == 0, out
    assert "8 samples, 2 labels, task classification, 22 image files" in out and "no leak or problem found" in out
    report = _json(tmp_path / "out")
    assert report["samples"] == 8 and report["image_formats"] == {"PNG": 22} and report["image_sizes"] == {"16x16": 22}
    assert report["frames_per_sample"] == [["2", 4], ["3", 2], ["4", 2]]  # lengths 2, 3, 4, 2 per label
    assert report["groups_per_label"] == {"left": 4, "right": 4} and report["strict_failures"] == 0
    assert "content hashes (sha256) of 22 files" in report["hashes"]  # small data: hashed by default
    html = (tmp_path / "out" / "inspect.html").read_text()
    # 3 strips per label: samples s0, s2, s3 (evenly spread), 2 + 4 + 2 images; nothing loaded from outside
    assert html.count("<figure>") == 2 * 8 and "http" not in html.split("<body>")[1]


def test_the_split_shown_is_trains_sample_by_sample(tmp_path, capsys):
    """Each sample's split, not only the counts: the same options and seed place each sample where
    ``prepare_data`` (train) does, and a sample train drops as too short is shown as "none"."""
    from seqvision.inspection.facts import inspect_data
    from seqvision.training.datamodule import prepare_data

    data = _folder(tmp_path / "data", per_label=8)
    options = {"val_fraction": 0.25, "test_fraction": 0.25, "min_images": 3}
    prepared = prepare_data(DataConfig(data=str(data), short_samples="drop", **options), seed=3)
    trained = {s.id: name for name, samples in prepared.splits.items() for s in samples}
    shown = inspect_data(data, seed=3, hash_files="off", thumbnails=0, **options).split_of
    assert len(shown) == 16 and set(shown.values()) == {"train", "val", "test", "none"}
    assert shown == {sid: trained.get(sid, "none") for sid in shown}
    assert list(shown.values()).count("none") == len(prepared.dropped)  # the 2-image samples
    # the CLI shows the same: its per-label counts are this split's
    code, out, _ = _run(capsys, data, "--out", tmp_path / "out", "--seed", 3, "--val-fraction", 0.25,
                        "--test-fraction", 0.25, "--min-images", 3, "--hash", "off")
    assert code == 0, out
    expected: dict[str, Counter] = {}
    for sid, split in shown.items():
        expected.setdefault(sid.split("/")[0], Counter())[split] += 1
    assert _json(tmp_path / "out")["per_label"] == expected


def test_an_image_train_refuses_unread_is_a_problem_not_a_crash(tmp_path, capsys):
    """Image headers are read by the loader's own check: an image over the 100,000,000-pixel limit is an
    unreadable file with the loader's reason, both past Pillow's own error limit (20000x10000: it raised
    from the thread pool) and between the two limits (12000x9000: Pillow only warns; it was shown readable)."""
    from seqvision.data.images import load_image
    from seqvision.errors import BadFileError
    from test_data_images import _png_header_only

    data = _folder(tmp_path / "data", per_label=2)
    huge, between = data / "left" / "s0" / "huge.png", data / "right" / "s1" / "between.png"
    huge.write_bytes(_png_header_only(20000, 10000))
    between.write_bytes(_png_header_only(12000, 9000))
    code, out, err = _run(capsys, data, "--out", tmp_path / "out", "--strict", "--hash", "off")
    assert code == 3 and not err, out + err
    assert "problem: unreadable files (2)" in out and "--on-bad-image skip" in out
    for path in (huge, between):
        with pytest.raises(BadFileError, match="100,000,000-pixel limit") as refused:
            load_image(path)
        assert f"{path}: {refused.value.reason}" in out  # train's reason, word for word
    report = _json(tmp_path / "out")
    assert report["image_sizes"] == {"16x16": 10} and "headers of 10 of 12 image files read" in report["headers"]


def test_a_copied_image_across_the_given_split_is_a_leak_and_fails_strict(tmp_path, capsys):
    data = tmp_path / "data"
    _folder(data / "train", per_label=2)
    _folder(data / "val", per_label=1, offset=50)
    shutil.copy(data / "train" / "left" / "s0" / "f1.png", data / "val" / "left" / "s0" / "copy.png")
    code, out, _ = _run(capsys, data, "--out", tmp_path / "out", "--strict")
    assert code == 3
    assert "leak: the same content (sha256) under other file names in several splits (1)" in out
    assert "the data's own split" in out
    # without hashing only identical paths are compared: this copy is not found, and says why
    code, out, _ = _run(capsys, data, "--hash", "off", "--strict")
    assert code == 0 and "content hashes off" in out


def test_manifest_leaks_shared_files_and_a_straddling_group(tmp_path, capsys):
    for name in ("a", "b", "c", "d", "e", "f"):
        _frames(tmp_path / "img" / name, 2, seed=ord(name))
    rows = [  # sample, label, split, group, images
        ("s1", "cat", "train", "g1", "a"), ("s2", "cat", "test", "g1", "b"),  # group g1 in two splits
        ("s3", "dog", "train", "g2", "c"), ("s4", "dog", "val", "g3", "c"),  # the same files in two splits
        ("s5", "cat", "val", "g4", "e"), ("s6", "dog", "test", "g5", "f"),
    ]
    manifest = tmp_path / "data.csv"
    manifest.write_text("sample_id,label,split,group,path,index\n" + "".join(
        f"{s},{label},{split},{group},img/{d}/f{t}.png,{t}\n" for s, label, split, group, d in rows for t in range(2)))
    code, out, _ = _run(capsys, manifest, "--out", tmp_path / "out", "--strict", "--hash", "off")
    assert code == 3, out
    found = _titles(_json(tmp_path / "out"))
    assert found["the same image file in several splits"] == 2
    assert found["groups that straddle the data's own split"] == 1
    assert found["identical samples (the same image list) in several splits"] == 1  # s3 and s4
    assert "move the samples that share them into one split" in out  # the data's split is to change
    assert _run(capsys, manifest, "--hash", "off")[0] == 0  # without --strict, a report only


def test_groups_keep_shared_files_in_one_planned_split(tmp_path, capsys):
    """Without groups, samples sharing a file may land in two splits; --group-by keeps them together."""
    for name in "abcdefghij":
        _frames(tmp_path / "img" / name, 2, seed=ord(name))
    lines = []
    for i in range(20):  # sample i uses the files of folder i // 2: pairs share files
        d = "abcdefghij"[i // 2]
        lines += [f"s{i:02d},{'cat' if i % 4 < 2 else 'dog'},img/{d}/f{t}.png,{d}\n" for t in range(2)]
    manifest = tmp_path / "data.csv"
    manifest.write_text("sample_id,label,path,source\n" + "".join(lines))
    code, out, _ = _run(capsys, manifest, "--seed", 1, "--val-fraction", 0.3, "--test-fraction", 0.3, "--hash", "off")
    assert "leak: the same image file in several splits" in out and "no groups given, but samples seem to share" in out
    code, out, _ = _run(capsys, manifest, "--seed", 1, "--val-fraction", 0.3, "--test-fraction", 0.3, "--group-by", "source",
                        "--strict", "--hash", "off")
    assert code == 0 and "leak" not in out, out


def test_videos_durations_rates_clip_leaks_and_thumbnails(tmp_path, capsys):
    folder = tmp_path / "clips"
    for label, n in (("up", 2), ("down", 2)):
        for i in range(n):
            (folder / label).mkdir(parents=True, exist_ok=True)
            write_video(folder / label / f"v{i}.mp4", frames=10 + 10 * i, fps=10, size=16)
    code, out, _ = _run(capsys, folder, "--out", tmp_path / "out", "--val-fraction", 0, "--test-fraction", 0)
    assert code == 0 and "4 videos" in out and "videos: 1.00-2.00 s; 10 fps 4" in out
    report = _json(tmp_path / "out")
    assert sorted(v["seconds"] for v in report["video_files"].values()) == [1.0, 1.0, 2.0, 2.0]
    assert report["frames_per_sample"] == [["10", 2], ["20", 2]]
    html = (tmp_path / "out" / "inspect.html").read_text()
    assert html.count("<figure>") == 2 * (10 + 16)  # 2 strips per label: 10 frames, and 16 of 20 (the report's most)
    # clips of one video given in two splits
    video = folder / "up" / "v1.mp4"
    manifest = tmp_path / "clips.csv"
    manifest.write_text(f"sample_id,label,video,start,end,split\nc1,up,{video},0,1,train\nc2,up,{video},1,2,val\n"
                        f"c3,down,{folder / 'down' / 'v1.mp4'},0,1.5,train\nc4,down,{video},0.5,9,train\n")
    code, out, _ = _run(capsys, manifest, "--strict")
    assert code == 3 and "leak: clips of one video file in several splits (1)" in out
    assert "problem: video clips whose start/end do not fit their video (1)" in out and "'c4'" in out


def test_check_images_finds_truncated_files(tmp_path, capsys):
    data = _folder(tmp_path / "data", per_label=3)
    broken = data / "left" / "s1" / "f0.png"
    broken.write_bytes(broken.read_bytes()[:60])  # the header survives, the pixels do not
    code, out, _ = _run(capsys, data, "--strict")
    assert code == 0 and "unreadable" not in out  # headers only: nothing decoded
    code, out, _ = _run(capsys, data, "--strict", "--check-images")
    assert code == 3 and "problem: unreadable files (1)" in out and str(broken) in out
    assert "(17 of 18 image files decoded, 1 unreadable)" in out
    assert "--on-bad-image skip" in out
    # a Matroska video cut short: its headers promise 40 frames, decoding runs out
    videos = tmp_path / "videos"
    (videos / "a").mkdir(parents=True)
    (videos / "b").mkdir()
    whole = write_video(videos / "a" / "whole.mkv", frames=40, gop=4)
    (videos / "b" / "cut.mkv").write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    code, out, _ = _run(capsys, videos, "--check-images", "--val-fraction", 0, "--test-fraction", 0, "--strict")
    assert code == 3 and "problem: truncated videos" in out and "cut.mkv" in out and "whole.mkv:" not in out


def test_empty_short_samples_and_labels_too_small_for_the_split(tmp_path, capsys):
    data = _folder(tmp_path / "data", labels=("big", "small"), per_label=4, lengths=(2, 3, 4, 4))
    shutil.rmtree(data / "small")
    _frames(data / "small" / "only", 4, seed=99)
    (data / "big" / "empty").mkdir()
    code, out, _ = _run(capsys, data, "--min-images", 3, "--out", tmp_path / "out", "--strict")
    assert code == 0, out  # problems, not leaks: --strict passes
    found = _titles(_json(tmp_path / "out"))
    assert found["empty samples (no image)"] == 1 and found["samples shorter than --min-images 3"] == 1
    assert found["labels with too few samples or groups for the split"] == 1
    assert "'small': none in test or val" in out and "--short-samples drop" in out
    per_label = _json(tmp_path / "out")["per_label"]
    assert per_label["big"]["none"] == 2  # the empty and the 2-image sample: left out, as train would


@pytest.mark.parametrize("args, message", [
    (["--val-fraction", "1.5"], "--val-fraction 1.5"),
    (["--group-by", "("], "is not a valid regular expression"),
    (["--targets", "speed"], "names manifest columns"),
])
def test_bad_options_are_one_line_before_any_work(tmp_path, capsys, args, message):
    data = _folder(tmp_path / "data", per_label=1)
    code, out, err = _run(capsys, data, *args)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1 and not out


def test_bad_data_and_out_are_one_line(tmp_path, capsys):
    code, _, err = _run(capsys, tmp_path / "missing")
    assert code == 1 and "does not exist" in err
    data = _folder(tmp_path / "data", per_label=1)
    (tmp_path / "file").write_text("x")
    code, _, err = _run(capsys, data, "--out", tmp_path / "file")
    assert code == 1 and "--out" in err and "is a file" in err
    assert main(["inspect", str(data), "--max-headers", "-1"]) == 2


def test_page_renders_in_chromium_escaped(tmp_path, capsys):
    data = _folder(tmp_path / "data", labels=("plain", EVIL), per_label=2)
    video = tmp_path / "data" / "plain" / "clip.mp4"
    write_video(video, frames=10, fps=10, size=16)
    code, out, _ = _run(capsys, data, "--out", tmp_path / "out", "--val-fraction", 0.34, "--test-fraction", 0)
    assert code == 0, out
    page = tmp_path / "out" / "inspect.html"
    dom = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    check = re.search(r'id="image-check"[^>]*', dom)
    assert check, dom[-2000:]
    total = int(re.search(r'data-total="(\d+)"', check.group(0)).group(1))
    loaded = int(re.search(r'data-loaded="(\d+)"', check.group(0)).group(1))
    assert total == 2 + 3 + 10 + 2 + 3 and loaded == total  # every thumbnail decoded by the browser
    assert "data-pwned" not in dom and EVIL in dom.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
    for table in ("overview", "labels", "lengths", "formats", "sizes", "durations", "fps", "thumbnails"):
        body = re.search(rf'<table class="{table}">(.*?)</table>', dom, re.S)
        assert body and body.group(1).count("<tr>") >= 2, table


def test_thumbnails_spread_over_samples_and_capped_in_labels(tmp_path, monkeypatch):
    from seqvision.inspection import facts

    data = _folder(tmp_path / "data", labels=("a", "b", "c"), per_label=5)
    monkeypatch.setattr(facts, "THUMB_LABELS", 2)  # the first two labels by name get strips
    result = facts.inspect_data(data, thumbnails=2, hash_files="off")
    from seqvision.config import TrainConfig

    assert result.options["seed"] == TrainConfig().seed  # the API's defaults are train's
    strips = result.thumbnails
    assert [(s.label, s.sample_id) for s in strips] == [("a", "a/s0"), ("a", "a/s4"), ("b", "b/s0"), ("b", "b/s4")]
    assert [s.indices for s in strips[:2]] == [[0, 1], [0, 1, 2]] and all(Path(p).exists() for p in strips[1].images)


def test_a_pack_is_inspected_from_its_shards(tmp_path, capsys):
    data = _folder(tmp_path / "data", per_label=2)
    assert main(["pack", str(data), "--out", str(tmp_path / "pack"), "--shard-size", "8KB"]) == 0
    capsys.readouterr()
    code, out, _ = _run(capsys, tmp_path / "pack", "--out", tmp_path / "out", "--val-fraction", 0.25, "--strict")
    assert code == 0, out
    report = _json(tmp_path / "out")
    assert report["layout"] == "pack" and report["samples"] == 4 and report["image_formats"] == {"PNG": 10}
    assert "content hashes (sha256) of 10 files" in report["hashes"]  # the index's digests
    assert (tmp_path / "out" / "inspect.html").read_text().count("<figure>") == 10
