import pytest

from seqvision.data.dataset import SequenceDataset, collate
from seqvision.data.discovery import discover
from seqvision.data.splits import assign_splits, load_splits, save_splits
from seqvision.tasks import TargetSpec
from seqvision.data.transforms import ClipTransform, Preprocessing
from seqvision.errors import DataError


def _dataset(samples, **kw):
    spec = TargetSpec.infer(samples)
    return SequenceDataset(samples, ClipTransform(Preprocessing(16, 16)), encode_target=spec.encode, **kw)


def test_collate_concatenates_real_images_only(folder_data):
    samples = discover(folder_data)
    ds = _dataset(samples)
    batch = collate([ds[i] for i in range(3)])  # lengths 2, 3, 4
    assert batch.lengths.tolist() == [2, 3, 4]
    assert batch.images.shape == (9, 3, 16, 16)  # N = sum of lengths, no padded image
    assert batch.targets.tolist() == [0, 0, 0]
    assert batch.sample_ids == ["left/s0", "left/s1", "left/s2"]


def test_max_images_samples_uniformly(folder_data):
    from seqvision.data.sampling import SamplingPolicy

    ds = _dataset(discover(folder_data), sampling=SamplingPolicy(num_frames=2))
    assert [len(ds[i]["clip"]) for i in range(3)] == [2, 2, 2]
    assert ds.clips(2, 4) == [[0, 3]]


def test_bad_image_is_an_error_naming_sample_and_file(folder_data):
    bad = folder_data / "left" / "s1" / "f1.png"
    bad.write_bytes(b"garbage")
    batch = collate([_dataset(discover(folder_data))[1]])
    with pytest.raises(DataError, match=r"sample 'left/s1'.*f1.png.*--on-bad-image skip"):
        batch.raise_errors()


def test_skip_mode_leaves_bad_images_out_and_reports_them(folder_data):
    (folder_data / "left" / "s1" / "f1.png").write_bytes(b"garbage")
    for f in (folder_data / "left" / "s0").iterdir():
        f.write_bytes(b"")
    ds = _dataset(discover(folder_data), on_bad_image="skip")
    batch = collate([ds[0], ds[1]])
    batch.raise_errors()
    assert batch.sample_ids == ["left/s1"] and batch.lengths.tolist() == [2]
    # two empty files and one garbage file, then sample s0 itself (it has no readable image left)
    assert len(batch.skipped) == 4
    assert sum("empty file" in m for m in batch.skipped) == 2
    assert any("f1.png" in m and "not a readable image" in m for m in batch.skipped)
    assert any(m.startswith("sample 'left/s0'") and "left out" in m for m in batch.skipped)


def test_sample_without_images_is_reported(tmp_path):
    (tmp_path / "a" / "empty").mkdir(parents=True)
    from seqvision.data.samples import Sample

    ds = SequenceDataset([Sample("a/empty", [], label="a", source=str(tmp_path))], ClipTransform(Preprocessing(16, 16)))
    with pytest.raises(DataError, match="no readable image"):
        collate([ds[0]]).raise_errors()


def test_task_inference_and_one_class_error(folder_data, tmp_path):
    samples = discover(folder_data)
    spec = TargetSpec.infer(samples)
    assert spec.task == "classification" and spec.class_names == ["left", "right"]
    with pytest.raises(DataError, match="only one class"):
        TargetSpec.infer([s for s in samples if s.label == "left"])
    for s in samples:
        s.label = {"left": "0.5", "right": "1.25"}[s.label]
    assert TargetSpec.infer(samples).task == "regression"
    assert TargetSpec.infer(samples).encode(samples[0]).tolist() == [0.5]


def test_unknown_label_names_the_sample(folder_data):
    samples = discover(folder_data)
    spec = TargetSpec("classification", class_names=["left", "up"])
    with pytest.raises(DataError, match=r"'right/s0'.*'right'.*not know"):
        spec.check(samples)


def test_stratified_split_is_seeded_and_saved(tmp_path, folder_data):
    samples = discover(folder_data)
    a = assign_splits(samples, val_fraction=0.34, test_fraction=0.0, seed=1)
    assert a == assign_splits(samples, val_fraction=0.34, test_fraction=0.0, seed=1)
    for label in ("left", "right"):  # each class gets its share of validation samples
        assert sum(1 for s in samples if s.label == label and a[s.id] == "val") == 1
    save_splits(a, tmp_path / "splits.json")
    assert load_splits(tmp_path / "splits.json", samples) == a
    with pytest.raises(DataError, match="other data"):
        load_splits(tmp_path / "splits.json", samples[:-1])
