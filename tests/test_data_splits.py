"""Groups: samples that share a source never straddle a split; the split file; the shared-source warning."""

import json
import warnings
from collections import Counter
from pathlib import Path

import pytest

from seqvision.cli import main
from seqvision.config import DataConfig, resolve_config
from seqvision.data.discovery import discover
from seqvision.data.samples import FrameRef, Sample
from seqvision.data.splits import assign_splits, load_splits, read_split_file, save_splits, shared_source_hint
from seqvision.errors import ConfigError, DataError
from seqvision.training.datamodule import prepare_data

from conftest import make_folder_dataset, write_image
from test_data_video import write_video


def _grouped_samples(groups_per_label: int = 10, per_group=(1, 2, 3, 4)) -> list[Sample]:
    """Objects of two labels, each seen in 1-4 views: a view is a sample, an object is a group."""
    samples = []
    for label in ("cat", "dog"):
        for g in range(groups_per_label):
            for v in range(per_group[g % len(per_group)]):
                sample_id = f"{label}{g}_v{v}"
                samples.append(Sample(sample_id, [FrameRef(Path(f"{sample_id}.png"))], label=label, group=f"{label}{g}"))
    return samples


def _splits_of_groups(samples: list[Sample], assignment: dict[str, str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for s in samples:
        out.setdefault(s.group, set()).add(assignment[s.id])
    return out


@pytest.mark.parametrize("seed", range(8))
def test_no_group_is_in_two_splits_and_each_label_is_in_each_split(seed):
    samples = _grouped_samples()
    assignment = assign_splits(samples, val_fraction=0.2, test_fraction=0.2, seed=seed)
    assert all(len(splits) == 1 for splits in _splits_of_groups(samples, assignment).values())
    by_split = Counter((assignment[s.id], s.label) for s in samples)
    for split in ("train", "val", "test"):  # stratified by label as far as the groups allow
        assert by_split[(split, "cat")] >= 1 and by_split[(split, "dog")] >= 1
    # held-out shares close to the fractions (25 samples per label: 5 each +- one group of up to 4)
    for label in ("cat", "dog"):
        assert abs(by_split[("val", label)] - 5) <= 3 and abs(by_split[("test", label)] - 5) <= 3


def test_without_groups_the_split_is_per_sample_and_seeded():
    samples = [Sample(f"s{i}", [FrameRef(Path(f"{i}.png"))], label="ab"[i % 2]) for i in range(20)]
    a = assign_splits(samples, val_fraction=0.2, test_fraction=0.2, seed=1)
    assert a == assign_splits(samples, val_fraction=0.2, test_fraction=0.2, seed=1)
    assert Counter(a.values()) == {"train": 12, "val": 4, "test": 4}


def test_a_given_split_pulls_the_rest_of_its_group_along():
    samples = _grouped_samples(groups_per_label=4)
    for s in samples:
        if s.group == "cat3" and s.id.endswith("_v0"):
            s.split = "test"
    assignment = assign_splits(samples, val_fraction=0.2, test_fraction=0.0, seed=0)
    assert {assignment[s.id] for s in samples if s.group == "cat3"} == {"test"}


def test_too_few_groups_is_a_clear_error():
    samples = [Sample(f"{g}_{v}", [], label="a", group=g) for g in ("x", "y") for v in range(5)]
    with pytest.raises(DataError, match="2 group.*too few for train, val and test"):
        assign_splits(samples, val_fraction=0.2, test_fraction=0.2, seed=0)
    # two groups are enough for train + val
    assignment = assign_splits(samples, val_fraction=0.2, test_fraction=0.0, seed=0)
    assert set(assignment.values()) == {"train", "val"}


def test_a_held_out_split_is_never_left_empty_when_groups_allow():
    # one big group and three small ones, fractions below half of any group: the greedy share gives the
    # held-out splits nothing, so the smallest training groups are moved there
    samples = [Sample(f"{g}_{v}", [], label="a", group=g) for g, n in (("big", 20), ("s1", 3), ("s2", 3), ("s3", 4)) for v in range(n)]
    assignment = assign_splits(samples, val_fraction=0.05, test_fraction=0.05, seed=0)
    assert set(assignment.values()) == {"train", "val", "test"}
    assert all(len(v) == 1 for v in _splits_of_groups(samples, assignment).values())


def test_split_file_records_groups_and_reads_the_old_format(tmp_path):
    samples = _grouped_samples(groups_per_label=3)
    assignment = assign_splits(samples, val_fraction=0.2, test_fraction=0.2, seed=0)
    save_splits(assignment, tmp_path / "splits.json", samples)
    saved = json.loads((tmp_path / "splits.json").read_text())
    assert saved["groups"]["cat1_v1"] == "cat1" and saved["splits"] == assignment
    assert load_splits(tmp_path / "splits.json", samples) == assignment
    (tmp_path / "old.json").write_text(json.dumps(assignment))  # written before groups existed
    assert read_split_file(tmp_path / "old.json") == assignment


# ---------------------------------------------------------------------------------- where groups come from


def _image_manifest(tmp_path: Path, header: str, rows: list[str]) -> Path:
    for i in range(3):
        write_image(tmp_path / f"i{i}.png", 40 * i)
    path = tmp_path / "m.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_manifest_group_column_and_group_by_another_column(tmp_path):
    m = _image_manifest(tmp_path, "sample_id,label,path,group,subject", ["a,x,i0.png,g1,p1", "a,x,i1.png,g1,p1", "b,y,i2.png,g2,p1"])
    assert {s.id: s.group for s in discover(m)} == {"a": "g1", "b": "g2"}
    assert {s.id: s.group for s in discover(m, group_by="subject")} == {"a": "p1", "b": "p1"}
    with pytest.raises(DataError, match="--group-by 'camera'.*no row has"):
        discover(m, group_by="camera")
    bad = _image_manifest(tmp_path, "sample_id,label,path,group", ["a,x,i0.png,g1", "a,x,i1.png,g2"])
    with pytest.raises(DataError, match="line 3.*sample 'a'.*group"):
        discover(bad)


def test_clips_of_one_video_are_grouped_by_their_file(tmp_path):
    write_video(tmp_path / "long.mp4", frames=40)
    write_video(tmp_path / "other.mp4", frames=20)
    (tmp_path / "m.csv").write_text(
        "sample_id,label,video,start,end\nc1,a,long.mp4,0,1\nc2,b,long.mp4,1,2.5\nc3,a,other.mp4,,\n"
    )
    groups = {s.id: s.group for s in discover(tmp_path / "m.csv")}
    assert groups["c1"] == groups["c2"] == str(tmp_path / "long.mp4") and groups["c3"] == str(tmp_path / "other.mp4")


def test_folder_group_by_regex_on_sample_names(tmp_path):
    for name in ("obj1_v1", "obj1_v2", "obj22_v1"):
        write_image(tmp_path / "d" / "cup" / name / "a.png", 50)
    samples = discover(tmp_path / "d", group_by=r"^[a-z]+\d+")
    assert {s.id: s.group for s in samples} == {"cup/obj1_v1": "obj1", "cup/obj1_v2": "obj1", "cup/obj22_v1": "obj22"}
    assert {s.group for s in discover(tmp_path / "d", group_by=r"obj(\d+)")} == {"1", "22"}  # a capture group
    with pytest.raises(DataError, match="sample 'cup/obj1_v1'.*does not match"):
        discover(tmp_path / "d", group_by=r"^view\d")
    with pytest.raises(ConfigError, match="not a valid regular expression"):  # refused before any work
        resolve_config(overrides={"data": {"data": str(tmp_path / "d"), "group_by": "obj(("}})


# ---------------------------------------------------------------------------------- the warning


def test_shared_sources_without_groups_are_noticed():
    def sample(sample_id, *paths, label="a"):
        return Sample(sample_id, [FrameRef(Path(p)) for p in paths], label=label)

    # overlapping clips of one frame folder: a shared image
    assert "both use the image" in shared_source_hint([sample("c1", "v/1.jpg", "v/2.jpg"), sample("c2", "v/2.jpg", "v/3.jpg")])
    # disjoint clips cut from per-video frame folders
    clips = [sample(f"{v}_{c}", f"{v}/{c}a.jpg", f"{v}/{c}b.jpg") for v in ("v1", "v2", "v3") for c in range(2)]
    assert "shared folders" in shared_source_hint(clips)
    # UCF101-style names: group g08, clips c01, c02
    ucf = [sample(f"run/v_Run_g{g:02d}_c{c:02d}", f"run/v_Run_g{g:02d}_c{c:02d}/f.jpg") for g in range(3) for c in range(2)]
    assert "trailing number" in shared_source_hint(ucf)
    # one sample per source: per-sample folders, names that differ only by the class prefix
    plain = [sample(f"{label}/{label[:4]}{i:03d}", f"{label}/{label[:4]}{i:03d}/f.jpg", label=label)
             for label in ("approaching", "receding") for i in range(5)]
    assert shared_source_hint(plain) is None


def test_training_warns_once_when_sources_look_shared_and_not_with_groups(tmp_path):
    rows = [f"v{v}_c{c},{'xy'[v % 2]},i{c}.png,v{v}" for v in range(4) for c in range(3)]
    m = _image_manifest(tmp_path, "sample_id,label,path,source", rows)
    cfg = DataConfig(data=str(m), val_fraction=0.25, test_fraction=0.25)
    with pytest.warns(UserWarning, match="no groups given.*--group-by"):
        prepare_data(cfg, seed=0)
    cfg.group_by = "source"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = prepare_data(cfg, seed=0)
    data.save_splits(tmp_path / "splits.json")
    held_out = {s.group for split in ("val", "test") for s in data.splits[split]}
    assert held_out and not held_out & {s.group for s in data.splits["train"]}
    assert json.loads((tmp_path / "splits.json").read_text())["groups"]["v0_c0"] == "v0"


def test_folder_data_with_one_sample_per_source_does_not_warn(tmp_path):
    data = make_folder_dataset(tmp_path / "d", per_label=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare_data(DataConfig(data=str(data)), seed=0)


def test_cli_group_by_reaches_the_split(tmp_path, capsys):
    for label in ("cup", "pen"):
        for name in ("obj1_v1", "obj1_v2", "obj2_v1"):
            write_image(tmp_path / "d" / label / f"{label}{name}" / "a.png", 50)
    args = ["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "run"), "--group-by", "^[a-z]+",
            "--backbone", "tiny_cnn", "--weights", "none", "--image-size", "16", "--max-epochs", "1"]
    assert main(args) == 1  # '^[a-z]+' makes two groups (cupobj, penobj): too few for three splits
    assert "too few for train, val and test" in capsys.readouterr().err
    assert not (tmp_path / "run" / "best.ckpt").exists()


def test_filling_an_empty_split_never_takes_a_class_out_of_training():
    # three classes, one object each: a held-out split could only be filled with a class's only group
    samples = [Sample(f"{label}_{v}", [], label=label, group=label) for label in "abc" for v in range(3)]
    with pytest.raises(DataError, match="only group of a class"):
        assign_splits(samples, val_fraction=0.15, test_fraction=0.15, seed=0)
    # without groups a split the fractions leave empty is filled from a class that can spare a sample
    plain = [Sample(f"{label}{i}", [], label=label) for label in "abcdefghij" for i in range(3)]
    assignment = assign_splits(plain, val_fraction=0.15, test_fraction=0.15, seed=0)
    assert set(assignment.values()) == {"train", "val", "test"}
    assert {s.label for s in plain if assignment[s.id] == "train"} == set("abcdefghij")


def test_an_old_flat_split_file_with_a_sample_named_splits_still_reads(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"splits": "train", "other": "val"}))
    assert read_split_file(tmp_path / "s.json") == {"splits": "train", "other": "val"}


def test_a_named_group_column_that_is_empty_everywhere_is_an_error(tmp_path):
    m = _image_manifest(tmp_path, "sample_id,label,path,subject", ["a,x,i0.png,", "b,y,i1.png,"])
    with pytest.raises(DataError, match="'subject': the column is empty on every row"):
        discover(m, group_by="subject")


def test_a_new_run_replaces_a_split_left_by_a_run_that_failed(tmp_path):
    from seqvision.workflows import train_and_evaluate as train

    from conftest import fast_config

    data = make_folder_dataset(tmp_path / "d", per_label=4)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "splits.json").write_text(json.dumps({"left/s0": "train"}))  # other data, no checkpoint
    train(fast_config(data, max_epochs=1), tmp_path / "run", progress=False)
    assert len(read_split_file(tmp_path / "run" / "splits.json")) == 8
