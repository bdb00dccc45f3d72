"""Fine-tuning the last stages on the frozen stages' cached maps: the maps give the live encoder's features,
training reads them instead of running the frozen stages, and the runs that cannot use them say why."""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import SHARED_WEIGHTS, fast_config, make_folder_dataset
from seqvision.errors import ConfigError
from seqvision.features.cache import CacheKey, FeatureStore
from seqvision.models.backbones import build_backbone
from seqvision.models.stage_maps import FrozenStages, StageCut
from seqvision.training.fit import fit


@pytest.mark.parametrize("name,size", [("resnet18", 64), ("mobilenet_v2", 64), ("tiny_cnn", 16)])
@pytest.mark.parametrize("k", [1, 2])
def test_the_last_stages_on_the_frozen_stages_maps_give_the_encoders_features(tmp_path, name, size, k):
    torch.manual_seed(0)
    encoder = build_backbone(name, weights="none")
    encoder.preprocessing = type(encoder.preprocessing)(size, size)
    encoder.set_trainable(k)
    encoder.eval()
    cut = StageCut.of(encoder, k)
    assert encoder.trunk[cut.index] is encoder.stages[-k]
    images = torch.randn(3, 3, size, size)
    with torch.no_grad():
        maps = FrozenStages(encoder, cut)(images)  # (3, C*h*w)
        want = encoder(images)
        assert maps.shape == (3, cut.row_size)
        assert torch.allclose(cut.features(encoder, maps), want, atol=1e-5)
        # through a float16 cache, as fine-tuning stores them: within fp16 rounding of the live features.
        # Randomly initialised MobileNetV2 gives maps of ~1e-9, below float16's normal range (as float16 they
        # are zeros, features of cosine 0): that cache stores float32 instead. Real weights: the next test.
        store = FeatureStore(tmp_path, CacheKey.for_encoder(FrozenStages(encoder, cut), encoder.preprocessing, dtype="float16"))
        store.add(["0", "1", "2"], maps)
        store.flush()
        got = cut.features(encoder, store.read([store.index[i] for i in "012"]))
    assert store.dtype == ("float32" if name == "mobilenet_v2" else "float16")
    assert torch.nn.functional.cosine_similarity(got, want).min() > 0.999


@pytest.mark.skipif(not SHARED_WEIGHTS.is_file(), reason="the offline ImageNet MobileNetV2 weights are not here")
def test_float16_maps_of_the_real_mobilenet_give_its_features():
    encoder = build_backbone("mobilenet_v2", weights=str(SHARED_WEIGHTS))
    encoder.preprocessing = type(encoder.preprocessing)(96, 96)
    encoder.set_trainable(1)
    encoder.eval()
    cut = StageCut.of(encoder, 1)
    assert cut.shape == (320, 3, 3)
    images = torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = cut.features(encoder, FrozenStages(encoder, cut)(images).half().float())
        want = encoder(images)
    assert torch.nn.functional.cosine_similarity(got, want).min() > 0.9999


def test_a_trunk_whose_stages_are_not_its_children_cannot_be_cut():
    encoder = build_backbone("regnet_y_400mf", weights="none")
    with pytest.raises(ConfigError, match="cannot be cached as feature maps"):
        StageCut.of(encoder, 1)


def _maps_config(data, tmp_path, **data_overrides):
    cfg = fast_config(data, max_epochs=2)
    cfg.model.trainable_stages = 1
    cfg.data.augment = False
    cfg.data.cache = str(tmp_path / "cache")
    for key, value in data_overrides.items():
        setattr(cfg.data, key, value)
    return cfg


def _weights(result) -> dict[str, torch.Tensor]:
    state = torch.load(result.last_checkpoint, weights_only=True)["state_dict"]
    return {k: v.float() for k, v in state.items() if v.is_floating_point()}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_fine_tuning_reads_the_cached_maps_and_learns_like_the_live_run(tmp_path, caplog, monkeypatch, dtype):
    import seqvision.models.stage_maps as stage_maps
    import seqvision.training.fit as fit_module

    monkeypatch.setattr(fit_module, "MAPS_DTYPE", dtype)
    data = make_folder_dataset(tmp_path / "data", per_label=4)
    calls = {"frozen": 0}
    real = stage_maps.FrozenStages.forward

    def counted(self, images):
        calls["frozen"] += 1
        return real(self, images)

    monkeypatch.setattr(stage_maps.FrozenStages, "forward", counted)
    with caplog.at_level(logging.WARNING, logger="seqvision"):
        maps = fit(_maps_config(data, tmp_path), tmp_path / "maps", progress=False)
    said = [r.getMessage() for r in caplog.records if "cached maps" in r.getMessage()]
    assert len(said) == 1 and "64x4x4 per image" in said[0] and "22 computed" in said[0]
    assert calls["frozen"] > 0 and maps.feature_cache["maps"] == [64, 4, 4]
    first = calls["frozen"]  # the extraction's passes; the epochs never run the frozen stages
    live = fit(_maps_config(data, tmp_path, cache="off"), tmp_path / "live", progress=False)
    assert calls["frozen"] == first and live.feature_cache is None
    a, b = _weights(maps), _weights(live)
    if dtype == "float32":  # the same seed and batches: exactly the live run's weights
        assert all(torch.equal(a[k], b[k]) for k in a)
    else:  # float16 maps: all but a few weights as the live run's; those few where a gradient is near 0, where
        # Adam's normalized step flips with the rounding: by at most a few learning-rate (1e-2) steps
        diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
        assert float((diff > 1e-3).float().mean()) < 0.02 and float(diff.max()) < 0.1
    # a second run finds every map in the cache: the frozen stages do not run at all
    fit(_maps_config(data, tmp_path), tmp_path / "maps2", progress=False)
    assert calls["frozen"] == first


def test_runs_that_cannot_use_maps_say_why_and_run_live(tmp_path, caplog):
    data = make_folder_dataset(tmp_path / "data", per_label=2)
    with caplog.at_level(logging.WARNING, logger="seqvision"):
        fit(_maps_config(data, tmp_path, augment=True), tmp_path / "a", progress=False)
        fit(_maps_config(data, tmp_path, cache_budget=1e-6), tmp_path / "b", progress=False)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "with augmentation: it changes the pixels every epoch" in messages
    assert "over the cache budget of 0.0 GB (--cache-budget)" in messages
    assert "cached maps" not in messages


@pytest.mark.parametrize("mode", ["random", "segments"])
def test_the_cache_budget_counts_every_frame_that_random_and_segments_draws_cache(tmp_path, caplog, mode):
    """Random and segments draws can pick any frame, so the maps of every frame are cached: 84 rows of
    64x4x4 float16 (172 KB) for these 6 videos, not 2 frames of each (25 KB). A 100 KB budget refuses."""
    from test_data_video import write_video

    data = tmp_path / "data"
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
        for i, frames in enumerate((12, 14, 16)):
            write_video(data / label / f"v{i}.mp4", frames=frames)
    with caplog.at_level(logging.WARNING, logger="seqvision"):
        fit(_maps_config(data, tmp_path, cache_budget=100e3 / 1e9, sampling=mode, num_frames=2), tmp_path / "run", progress=False)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "(84 images x 64x4x4, float16), over the cache budget" in messages
    assert "cached maps" not in messages


def test_frozen_layers_stay_frozen_after_syncbatchnorm_conversion_and_learning_stages_keep_dropout():
    encoder = build_backbone("resnet18", weights="none")
    encoder.set_trainable(1)
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(encoder)  # what Lightning does for --sync-batchnorm
    converted.train()
    stem, last = converted.trunk[1], converted.trunk[-1][0].bn1
    assert isinstance(stem, torch.nn.SyncBatchNorm) and not stem.training  # frozen: running statistics kept
    assert last.training  # the learning stage normalizes by batch
    efficientnet = build_backbone("efficientnet_b0", weights="none")
    efficientnet.set_trainable(1)
    efficientnet.train()
    learning = [m for m in efficientnet.stages[-1].modules() if not list(m.parameters())]
    assert learning and all(m.training for m in learning)  # dropout / stochastic depth inside it stay on
