import json

import pytest

from seqvision.data.discovery import discover, discover_inputs
from seqvision.data.samples import natural_key
from seqvision.errors import DataError

from conftest import make_folder_dataset, write_image


def test_folder_layout_labels_ids_and_lengths(folder_data):
    samples = discover(folder_data)
    assert [s.id for s in samples] == [f"{lab}/s{n}" for lab in ("left", "right") for n in range(3)]
    assert {s.label for s in samples} == {"left", "right"}
    assert [len(s.frames) for s in samples[:3]] == [2, 3, 4]
    assert all(s.split is None for s in samples)


def test_folder_layout_with_split_folders(tmp_path):
    for split in ("train", "val", "test"):
        make_folder_dataset(tmp_path / split, per_label=1)
    samples = discover(tmp_path)
    assert {s.split for s in samples} == {"train", "val", "test"}
    assert "train/left/s0" in {s.id for s in samples}


def test_natural_order_of_file_names(tmp_path):
    for name in ("f10.png", "f2.png", "f1.png", "F3.png"):
        write_image(tmp_path / "d" / "a" / "s" / name, 10)
    write_image(tmp_path / "d" / "b" / "s" / "x.png", 10)
    sample = discover(tmp_path / "d")[0]
    assert [f.path.name for f in sample.frames] == ["f1.png", "f2.png", "F3.png", "f10.png"]
    assert sorted(["a10", "a9", "a1"], key=natural_key) == ["a1", "a9", "a10"]


def test_images_directly_in_a_label_folder_is_a_clear_error(tmp_path):
    write_image(tmp_path / "cat" / "img1.png", 10)
    with pytest.raises(DataError, match="one folder per sample"):
        discover(tmp_path)


def test_missing_data_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        discover(tmp_path / "nope")


def _images(tmp_path, n=3):
    return [write_image(tmp_path / "img" / f"i{k}.png", 10 * k) for k in range(n)]


def test_csv_manifest_one_row_per_image_with_index(tmp_path):
    _images(tmp_path)
    (tmp_path / "m.csv").write_text(
        "sample_id,label,path,index\n"
        "a,cat,img/i0.png,2\n"
        "a,cat,img/i1.png,0\n"
        "a,cat,img/i2.png,1\n"
        "b,dog,img/i0.png,0\n"
    )
    samples = {s.id: s for s in discover(tmp_path / "m.csv")}
    assert [f.path.name for f in samples["a"].frames] == ["i1.png", "i2.png", "i0.png"]
    assert samples["a"].frames[0].path == tmp_path / "img" / "i1.png"  # relative to the manifest
    assert samples["b"].label == "dog"


def test_csv_manifest_without_index_uses_natural_order(tmp_path):
    for name in ("p10.png", "p9.png"):
        write_image(tmp_path / name, 1)
    (tmp_path / "m.csv").write_text("sample_id,label,path\ns,x,p10.png\ns,x,p9.png\n")
    assert [f.path.name for f in discover(tmp_path / "m.csv")[0].frames] == ["p9.png", "p10.png"]


def test_per_sample_rows_csv_and_jsonl(tmp_path):
    _images(tmp_path)
    (tmp_path / "m.csv").write_text("sample_id,label,paths\na,cat,img/i2.png;img/i0.png\n")
    assert [f.path.name for f in discover(tmp_path / "m.csv")[0].frames] == ["i2.png", "i0.png"]
    rows = [{"sample_id": "a", "label": "cat", "paths": ["img/i1.png", "img/i0.png"]},
            {"sample_id": "b", "label": "dog", "path": "img/i2.png"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    samples = {s.id: s for s in discover(tmp_path / "m.jsonl")}
    assert [f.path.name for f in samples["a"].frames] == ["i1.png", "i0.png"]
    assert len(samples["b"].frames) == 1


def test_manifest_regression_targets(tmp_path):
    _images(tmp_path, 1)
    (tmp_path / "m.csv").write_text("sample_id,path,target_speed,target_size\na,img/i0.png,1.5,2\n")
    sample = discover(tmp_path / "m.csv")[0]
    assert sample.targets == {"target_size": 2.0, "target_speed": 1.5}


@pytest.mark.parametrize(
    "body, message",
    [
        ("sample_id,label,path\na,cat,img/missing.png\n", "line 2.*does not exist"),
        ("sample_id,label,path\na,cat,\n", "line 2.*no 'path'"),
        ("label,path\ncat,img/i0.png\n", "line 2.*no sample id"),
        ("sample_id,label,path\na,cat,img/i0.png\na,dog,img/i1.png\n", "line 3.*one sample has one target"),
        ("sample_id,label,path,index\na,cat,img/i0.png,1\na,cat,img/i1.png,\n", "some rows have an 'index'"),
        ("sample_id,label,path,index\na,cat,img/i0.png,1\na,cat,img/i1.png,1\n", "line 3.*repeats index"),
        ("sample_id,label,path,index\na,cat,img/i0.png,one\n", "line 2.*'index' must be a number"),
        ("sample_id,label,path\na,cat,img/i0.png,extra\n", "line 2.*more values"),
        ("sample_id,label,path\na,,img/i0.png\n", "line 2.*no 'label'"),
        ("", "empty manifest"),
    ],
)
def test_malformed_csv_rows_name_the_line(tmp_path, body, message):
    _images(tmp_path, 2)
    (tmp_path / "m.csv").write_text(body)
    with pytest.raises(DataError, match=message):
        discover(tmp_path / "m.csv")


def test_malformed_jsonl_line(tmp_path):
    write_image(tmp_path / "a.png", 10)
    (tmp_path / "m.jsonl").write_text('{"sample_id": "a", "label": "x", "path": "a.png"}\n{not json\n')
    with pytest.raises(DataError, match=r"m.jsonl line 2: not valid JSON"):  # the first line is fine
        discover(tmp_path / "m.jsonl")


def test_non_utf8_manifest(tmp_path):
    (tmp_path / "m.csv").write_bytes(b"sample_id,label,path\n\xff\xfe,cat,x.png\n")
    with pytest.raises(DataError, match="UTF-8"):
        discover(tmp_path / "m.csv")


def test_prediction_inputs_sample_folder_root_and_manifest(folder_data, tmp_path):
    one = discover_inputs([folder_data / "left" / "s1"])
    assert len(one) == 1 and len(one[0].frames) == 3
    many = discover_inputs([folder_data])
    assert len(many) == 6 and many[0].label == "left"
    with pytest.raises(DataError, match="does not exist"):
        discover_inputs([tmp_path / "missing"])


def test_a_prediction_input_given_twice_is_predicted_once_and_a_shared_name_is_refused(folder_data, tmp_path, caplog):
    sample = folder_data / "left" / "s1"
    with caplog.at_level("WARNING", logger="seqvision"):
        twice = discover_inputs([sample, folder_data / "right" / "s0", sample])
    assert [s.id for s in twice] == [str(sample), str(folder_data / "right" / "s0")]
    assert "given more than once" in caplog.text and str(sample) in caplog.text
    for name in ("a", "b"):  # two manifests that both name a different sample "x"
        (tmp_path / f"{name}.csv").write_text(f"sample_id,path\nx,{folder_data / ('left' if name == 'a' else 'right') / 's0' / 'f0.png'}\n")
    with pytest.raises(DataError, match="two different samples are both named 'x'"):
        discover_inputs([tmp_path / "a.csv", tmp_path / "b.csv"])
