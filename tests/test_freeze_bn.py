"""Fine-tuning weights whose BatchNorm is folded: BatchNorm stays in evaluation mode, or the features are lost."""

import pytest
import torch

from seqvision.models.sequence_model import build_sequence_model

from conftest import SHARED_WEIGHTS


def _weights(tmp_path, *, folded: bool):
    """A tiny CNN's trunk saved as a weights file: untrained BatchNorm statistics are exactly those of folded
    weights (mean 0, variance 1); ``folded=False`` gives them real statistics."""
    model = build_sequence_model(2, backbone="tiny_cnn", weights="none")
    state = model.encoder.trunk.state_dict()
    if not folded:
        for name in state:
            if name.endswith("running_var"):
                state[name] = torch.full_like(state[name], 2.0)
    path = tmp_path / ("folded.pth" if folded else "real.pth")
    torch.save(state, path)
    return str(path)


def _norm_modes(model):
    return {m.training for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)}


def test_folded_batchnorm_stays_in_evaluation_mode_while_the_backbone_learns(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="seqvision"):
        model = build_sequence_model(2, backbone="tiny_cnn", weights=_weights(tmp_path, folded=True), trainable_stages=2)
    assert model.encoder.frozen_norm and any("BatchNorm is folded" in r.getMessage() for r in caplog.records)
    model.train()
    assert _norm_modes(model) == {False}
    stats = {k: v.clone() for k, v in model.encoder.state_dict().items() if "running" in k}
    model(torch.randn(6, 3, 16, 16), torch.tensor([3, 3])).sum().backward()
    assert all(torch.equal(stats[k], v) for k, v in model.encoder.state_dict().items() if "running" in k)
    assert model.encoder.stages[-1][0].weight.grad is not None  # the last stages still learn


@pytest.mark.parametrize("case", ["real statistics", "random init", "asked off"])
def test_batchnorm_trains_as_usual_otherwise(tmp_path, case):
    weights = {"real statistics": _weights(tmp_path, folded=False), "random init": "none", "asked off": _weights(tmp_path, folded=True)}[case]
    model = build_sequence_model(2, backbone="tiny_cnn", weights=weights, freeze_bn=False if case == "asked off" else None)
    model.train()
    assert not model.encoder.frozen_norm and _norm_modes(model) == {True}


@pytest.mark.skipif(not SHARED_WEIGHTS.exists(), reason="the shared MobileNetV2 weights are not beside the project")
def test_fine_tuning_the_shared_mobilenet_keeps_its_features():
    """Its BatchNorm is folded: normalizing by batch statistics turns the ImageNet features into others
    (why fine-tuning it learned nothing); in evaluation mode the training pass gives the real features."""
    torch.manual_seed(0)
    images = torch.rand(4, 3, 224, 224) * 2 - 1  # the weights' normalization: mean = std = 0.5
    features = {}
    for freeze_bn in (None, False):
        model = build_sequence_model(2, backbone="mobilenet_v2", weights=str(SHARED_WEIGHTS), trainable_stages=1, freeze_bn=freeze_bn)
        with torch.no_grad():
            model.eval()
            reference = model.encoder(images)
            model.train()
            features[freeze_bn] = torch.nn.functional.cosine_similarity(model.encoder(images), reference).min()
    assert features[None] > 0.999  # auto: BatchNorm kept in evaluation mode
    assert features[False] < 0.9  # batch statistics: the features are not the pretrained ones
