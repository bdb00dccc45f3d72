import urllib.error

import pytest
import torch

from seqvision.config import ModelConfig
from seqvision.errors import ConfigError
from seqvision.models.backbones import build_backbone, register_backbone

from conftest import SHARED_WEIGHTS


def _model(**kw):
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="tiny_cnn", weights="none", hidden_size=8, **kw)
    return cfg.build_model(3).eval()


@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_never_changes_a_result(bidirectional):
    model = _model(bidirectional=bidirectional, num_layers=2)
    torch.manual_seed(1)
    lengths = torch.tensor([2, 5, 3])
    images = torch.randn(int(lengths.sum()), 3, 16, 16)
    with torch.no_grad():
        batched = model(images, lengths)
        starts = [0, 2, 7]
        for i, (start, n) in enumerate(zip(starts, lengths.tolist())):
            alone = model(images[start:start + n], torch.tensor([n]))
            assert torch.allclose(alone[0], batched[i], atol=1e-5)


def test_cnn_runs_once_per_batch_on_real_images_only():
    model = _model()
    calls = []
    model.encoder.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    lengths = torch.tensor([1, 4, 2])
    model(torch.randn(7, 3, 16, 16), lengths)
    assert calls == [7]


def test_frozen_backbone_no_grads_and_batchnorm_stays_in_eval():
    model = _model(freeze=True)
    model.train()
    assert model.encoder.fully_frozen
    assert all(not m.training for m in model.encoder.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert model.temporal_head.training


def test_trainable_stages_fine_tunes_only_the_last_ones():
    model = _model(trainable_stages=1)
    stages = model.encoder.stages
    assert all(p.requires_grad for p in stages[-1].parameters())
    assert not any(p.requires_grad for s in stages[:-1] for p in s.parameters())
    model.train()
    assert stages[-1][1].training and not stages[0][1].training  # BatchNorm of frozen stages stays put
    with pytest.raises(ConfigError, match="has 4 stages"):
        _model(trainable_stages=9)


def test_registry_refuses_a_duplicate_name():
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("tiny_cnn")(lambda: None)


@pytest.mark.parametrize("name, features", [("resnet18", 512), ("mobilenet_v2", 1280), ("squeezenet1_0", 512)])
@pytest.mark.parametrize("pool", ["avg", "max"])
def test_torchvision_backbones_lose_their_classifier(name, features, pool):
    encoder = build_backbone(name, weights="none", pool=pool).eval()
    assert encoder.num_features == features
    with torch.no_grad():
        assert encoder(torch.randn(2, 3, 64, 64)).shape == (2, features)


def test_unknown_backbone_and_imagenet_for_tiny():
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_backbone("resnet9000", weights="none")
    with pytest.raises(ConfigError, match="no pretrained weights"):
        build_backbone("tiny_cnn", weights="imagenet")


def test_offline_imagenet_download_suggests_a_local_file(monkeypatch):
    from torchvision.models import ResNet18_Weights

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(type(ResNet18_Weights.DEFAULT), "get_state_dict", offline)
    with pytest.raises(ConfigError, match=r"--weights PATH.*--weights none"):
        build_backbone("resnet18", weights="imagenet")


def test_local_weights_file_loads_and_mismatch_is_clear(tmp_path):
    import torchvision

    model = torchvision.models.resnet18()
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "w.ckpt")
    encoder = build_backbone("resnet18", weights=str(tmp_path / "w.ckpt"))
    assert torch.equal(encoder.trunk[0].weight, model.conv1.weight)
    torch.save(torchvision.models.mobilenet_v2().state_dict(), tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="does not fit backbone 'resnet18'"):
        build_backbone("resnet18", weights=str(tmp_path / "other.pth"))
    with pytest.raises(ConfigError, match="missing.pth does not exist; use imagenet, none or a path"):
        build_backbone("resnet18", weights=str(tmp_path / "missing.pth"))


@pytest.mark.skipif(not SHARED_WEIGHTS.exists(), reason="the shared ImageNet weights file is not present")
def test_shared_mobilenet_weights_classify_like_plain_torchvision():
    import torchvision

    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(torch.load(SHARED_WEIGHTS, weights_only=True))
    reference.eval()
    encoder = build_backbone("mobilenet_v2", weights=str(SHARED_WEIGHTS)).eval()
    torch.manual_seed(0)
    images = torch.rand(4, 3, 224, 224) * 2 - 1  # mean = std = 0.5 normalization of [0, 1] pixels
    with torch.no_grad():
        expected = reference(images)
        ours = reference.classifier(encoder(images))
    assert torch.allclose(ours, expected, atol=1e-4)
    assert torch.equal(ours.argmax(-1), expected.argmax(-1))


@pytest.mark.parametrize("name, features", [
    ("timm/resnet18", 512),  # a CNN: (N, C, h, w) feature map
    ("timm/vit_tiny_patch16_224", 192),  # a ViT: (N, tokens, C), pooled by its class token
    ("timm/vit_tiny_r_s16_p8_224", 192),  # a hybrid: ResNet stem + transformer
])
def test_timm_models_give_their_own_number_of_features(name, features):
    pytest.importorskip("timm")
    from seqvision.data.transforms import Preprocessing
    from seqvision.models.backbones import build_backbone

    encoder = build_backbone(name, weights="none").eval()
    assert encoder.num_features == features
    with torch.no_grad():
        out = encoder(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, features) and not torch.allclose(out[0], out[1])
    # timm's interpolation travels with the preprocessing (into checkpoints and the cache key)
    assert encoder.preprocessing.interpolation == "bicubic"
    assert Preprocessing.from_dict(encoder.preprocessing.to_dict()) == encoder.preprocessing


def test_timm_grid2_needs_a_feature_map():
    pytest.importorskip("timm")
    from seqvision.errors import ConfigError
    from seqvision.models.backbones import build_backbone

    assert build_backbone("timm/resnet18", weights="none", pool="grid2").num_features == 4 * 512
    assert build_backbone("timm/resnet18", weights="none", pool="max").num_features == 512
    with pytest.raises(ConfigError, match="gives tokens.*grid2"):
        build_backbone("timm/vit_tiny_patch16_224", weights="none", pool="grid2")


def test_bilinear_preprocessing_keeps_the_keys_written_before():
    from seqvision.data.transforms import Preprocessing

    assert "interpolation" not in Preprocessing().to_dict()  # cache keys and checkpoints of earlier runs still match
    old = {"image_size": 224, "resize_size": 256, "mean": [0.5] * 3, "std": [0.5] * 3}
    assert Preprocessing.from_dict(old).interpolation == "bilinear"
