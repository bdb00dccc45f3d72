"""--drop-stages: the backbone without its last N stages, pooled at an earlier map (where small motions
survive); the kept layers are the full backbone's, with the same weights and state_dict keys."""

from __future__ import annotations

import pytest
import torch
from conftest import fast_config, make_folder_dataset

from seqvision.cli import main
from seqvision.errors import ConfigError
from seqvision.inference.predictor import Predictor
from seqvision.models.backbones import build_backbone
from seqvision.workflows import train_and_evaluate


@pytest.mark.parametrize("backbone, drop, features", [("resnet18", 2, 128), ("mobilenet_v2", 12, 32), ("tiny_cnn", 1, 64)])
def test_a_cut_backbone_is_the_full_ones_first_stages_with_its_weights(backbone, drop, features):
    torch.manual_seed(0)
    whole = build_backbone(backbone, weights="none").eval()
    cut = build_backbone(backbone, weights="none", drop_stages=drop).eval()
    assert cut.num_features == features and len(cut.stages) == len(whole.stages) - drop
    kept, full = cut.trunk.state_dict(), whole.trunk.state_dict()
    assert kept.keys() < full.keys()  # the kept layers keep their names: pretrained weights fit them as they are
    cut.trunk.load_state_dict({k: full[k] for k in kept})  # strict: the full backbone's weights fill the cut one
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    prefix = torch.nn.Sequential(*list(whole.trunk.children())[: len(list(cut.trunk.children()))])
    with torch.no_grad():
        want = prefix(images.contiguous(memory_format=torch.channels_last)).mean((2, 3))  # (3, C): the earlier map, pooled
        assert torch.allclose(cut(images), want, atol=1e-5)


@pytest.mark.parametrize("backbone, drop, fragment", [
    ("tiny_cnn", 4, "has 4 stages; keep at least one"),
    ("regnet_x_400mf", 1, "cannot be cut between its stages"),
    ("tiny_cnn", -1, "give 0"),
])
def test_a_cut_that_cannot_be_made_is_refused_in_one_line(backbone, drop, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_backbone(backbone, weights="none", drop_stages=drop)


def test_a_cut_shifted_model_trains_and_its_checkpoint_predicts_what_the_model_computes(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_label=3)
    cfg = fast_config(data, max_epochs=1)
    cfg.model.drop_stages, cfg.model.trainable_stages, cfg.model.temporal_shift = 1, 2, "causal"
    cfg.train.diagnostics = "fast"
    result = train_and_evaluate(cfg, tmp_path / "run", progress=False)
    predictor = Predictor.load(result.best_checkpoint, precision="32")
    encoder = predictor.model.encoder
    assert encoder.num_features == 64 and len(encoder.stages) == 3  # tiny_cnn's 4 stages, the last one dropped
    assert type(encoder.stages[-1][0]).__name__ == "ShiftedConv2d"
    from seqvision.data.discovery import discover

    samples = discover(str(data))[:2]
    outputs = predictor.run(samples).outputs
    item = predictor.dataset(samples[:1])[0]
    with torch.no_grad():
        direct = predictor.model.eval()(item["clip"], torch.tensor(item["clip_lengths"]))
    assert torch.allclose(outputs[0], direct[0], atol=1e-4)


def test_extract_with_a_cut_backbone_writes_features_of_the_cut_width(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "data", per_label=2)
    code = main(["extract", "--data", str(data), "--out", str(tmp_path / "cache"), "--backbone", "tiny_cnn",
                 "--weights", "none", "--image-size", "16", "--drop-stages", "2", "--num-workers", "0"])
    assert code in (0, None)
    import numpy as np

    (shard,) = (tmp_path / "cache").glob("*/shard-*.npy")
    assert np.load(shard).shape[1] == 32  # tiny_cnn's second stage: 32 channels (the whole one: 64)


def test_a_cut_never_shares_the_full_backbones_feature_cache_onnx_file_or_runtime_choice(tmp_path):
    """AlexNet's last "stage" is a MaxPool: cut off, every weight is the full network's, the features are not."""
    from seqvision.data.transforms import Preprocessing
    from seqvision.features.cache import CacheKey
    from seqvision.features.engines import onnx_file
    from seqvision.features.runtimes import _architecture

    torch.manual_seed(0)
    full = build_backbone("alexnet", weights="none")
    cut = build_backbone("alexnet", weights="none", drop_stages=1)
    cut.trunk.load_state_dict(full.trunk.state_dict())  # the same weights, parameter for parameter
    prep = Preprocessing(64, 64, (0.5,) * 3, (0.5,) * 3)
    full.preprocessing = cut.preprocessing = prep
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(full.eval()(images), cut.eval()(images))  # other features...
    assert CacheKey.for_encoder(full, prep).digest != CacheKey.for_encoder(cut, prep).digest  # ...another cache
    assert _architecture(full) != _architecture(cut)  # another remembered runtime choice
    assert onnx_file(full, tmp_path) != onnx_file(cut, tmp_path)  # another exported file


@pytest.mark.parametrize("backbone, drop", [("tiny_cnn", 1), ("mobilenet_v2", 12)])
def test_weights_of_the_whole_backbone_or_of_its_cut_trunk_load_into_the_cut_one(tmp_path, backbone, drop):
    torch.manual_seed(3)
    whole = build_backbone(backbone, weights="none")
    kept = build_backbone(backbone, weights="none", drop_stages=drop).trunk.state_dict().keys()
    if backbone == "tiny_cnn":  # its trunk is the whole model: the same names
        full = whole.trunk.state_dict()
    else:  # a torchvision file names the model's modules: features.N...
        import torchvision

        model = torchvision.models.mobilenet_v2()
        model.features = whole.trunk
        full = model.state_dict()
        kept = {f"features.{k}" for k in kept}
    torch.save(full, tmp_path / "whole.pth")
    torch.save({k: v for k, v in full.items() if k in kept}, tmp_path / "cut.pth")  # saved from the cut trunk
    for name in ("whole.pth", "cut.pth"):
        cut = build_backbone(backbone, weights=str(tmp_path / name), drop_stages=drop)
        mine = cut.trunk.state_dict()
        assert len(mine) == len(kept) and all(torch.equal(v, whole.trunk.state_dict()[k]) for k, v in mine.items())
    with pytest.raises(ConfigError, match="does not fit backbone"):  # the cut file cannot make the whole backbone
        build_backbone(backbone, weights=str(tmp_path / "cut.pth"))
    other = build_backbone("resnet18" if backbone == "tiny_cnn" else "tiny_cnn", weights="none").trunk.state_dict()
    torch.save(other, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match=rf"other.pth fits neither backbone '{backbone}' nor its cut without the last "
                                          rf"{drop} stages \(--drop-stages {drop}\): \d+ missing"):
        build_backbone(backbone, weights=str(tmp_path / "other.pth"), drop_stages=drop)
