"""A local weights file (--weights PATH) brings the preprocessing it expects in a sidecar PATH.json."""

import json
import warnings

import pytest
import torch
import torchvision

from seqvision.data.transforms import Preprocessing
from seqvision.errors import ConfigError
from seqvision.inference.predictor import Predictor
from seqvision.models.backbones import build_backbone
from seqvision.training.fit import fit

from conftest import fast_config, make_folder_dataset

# the convention of the shared offline MobileNetV2 (../shared/weights/README.md): mean = std = 0.5
HALF = {"image_size": 224, "resize_size": 256, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


@pytest.fixture(scope="module")
def mobilenet_file(tmp_path_factory):
    """A random MobileNetV2 state_dict: the shape of the shared weights, in a folder the test may write."""
    path = tmp_path_factory.mktemp("weights") / "mobilenet_v2.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), path)
    return path


def _tiny_file(tmp_path, sidecar=None):
    path = tmp_path / "tiny.pth"
    torch.save(build_backbone("tiny_cnn", weights="none").trunk.state_dict(), path)
    if sidecar is not None:
        (tmp_path / "tiny.pth.json").write_text(sidecar if isinstance(sidecar, str) else json.dumps(sidecar))
    return path


def test_the_sidecar_is_the_backbones_preprocessing(mobilenet_file, tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(mobilenet_file.read_bytes())
    (tmp_path / "w.pth.json").write_text(json.dumps({**HALF, "image_size": 192, "resize_size": 220, "interpolation": "bicubic"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with a sidecar nothing is assumed, so nothing is said
        encoder = build_backbone("mobilenet_v2", weights=str(weights))
    assert encoder.preprocessing == Preprocessing(192, 220, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), interpolation="bicubic")


def test_a_weights_file_without_a_sidecar_is_said_once_in_one_line(mobilenet_file):
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        encoder = build_backbone("mobilenet_v2", weights=str(mobilenet_file))
    assert encoder.preprocessing == Preprocessing(224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert len(said) == 1
    message = str(said[0].message)
    assert "\n" not in message
    assert "ImageNet's mean/std and 224 px" in message and f"{mobilenet_file}.json" in message
    assert '"mean": [0.485, 0.456, 0.406]' in message  # how to write the file, in the file's own format


def test_the_run_overrides_the_sidecar_and_its_checkpoint_records_the_result(tmp_path):
    """--image-size/--resize-size override the sidecar, which still gives mean and std; the checkpoint holds it."""
    weights = _tiny_file(tmp_path, {"image_size": 24, "resize_size": 28, "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]})
    cfg = fast_config(make_folder_dataset(tmp_path / "data"), max_epochs=1)
    cfg.model.weights = str(weights)
    result = fit(cfg, tmp_path / "run", progress=False)
    prep = Predictor.load(result.best_checkpoint).preprocessing
    assert (prep.image_size, prep.resize_size) == (16, 16)  # fast_config's flags
    assert prep.mean == (0.1, 0.2, 0.3) and prep.std == (0.4, 0.5, 0.6)  # the sidecar's


def test_a_run_that_gives_mean_and_std_is_not_told_about_a_missing_sidecar(tmp_path):
    """The missing sidecar is said when the run takes the weights' preprocessing on trust; with --mean and
    --std given, nothing is assumed that the run uses, so nothing is said."""
    cfg = fast_config(make_folder_dataset(tmp_path / "data"), max_epochs=1)
    cfg.model.weights = str(_tiny_file(tmp_path))
    for given, out in ((False, "a"), (True, "b")):
        cfg.data.mean, cfg.data.std = ([0.5] * 3, [0.25] * 3) if given else (None, None)
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            fit(cfg, tmp_path / out, progress=False)
        assert any("has no tiny.pth.json beside it" in str(w.message) for w in said) is not given


@pytest.mark.parametrize("sidecar, said", [
    ("{not json", "not readable JSON"),
    ([0.5, 0.5, 0.5], "a JSON object is needed"),
    ({**HALF, "size": 224}, "unknown key"),
    ({"image_size": 224, "mean": [0.5, 0.5, 0.5]}, "std missing"),
    ({**HALF, "mean": [0.5, 0.5]}, "mean must be a list of 3 numbers"),
    ({**HALF, "mean": [123.7, 116.3, 103.5], "std": [58.4, 57.1, 57.4]}, "divide 0-255 values by 255"),
    ({**HALF, "std": [0.5, 0.0, 0.5]}, "std values must be positive"),
    ({**HALF, "image_size": 224.5}, "image_size must be a whole number"),
    ({**HALF, "resize_size": 200}, "smaller than image_size"),
    ({**HALF, "interpolation": "lanczos"}, "interpolation 'lanczos'"),
])
def test_a_malformed_sidecar_is_refused_naming_the_file(tmp_path, sidecar, said):
    weights = _tiny_file(tmp_path, sidecar)
    with pytest.raises(ConfigError, match=said) as caught:
        build_backbone("tiny_cnn", weights=str(weights))
    assert f"{weights}.json" in str(caught.value)


def test_a_sidecar_without_the_optional_keys_keeps_the_backbones_ratio(tmp_path):
    weights = _tiny_file(tmp_path, {"image_size": 64, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})
    prep = build_backbone("tiny_cnn", weights=str(weights)).preprocessing
    assert (prep.image_size, prep.resize_size, prep.interpolation) == (64, 64, "bilinear")  # tiny_cnn: 32 of 32
