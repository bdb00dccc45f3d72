"""The feature cache on videos: the frames any draw of the sampling policy can pick are cached, frozen
training on them matches the live CNN, and a changed video invalidates its own frames only."""

import csv
import io
import random
import re

import pytest

from seqvision.cli import main
from seqvision.data.sampling import MODES, SamplingPolicy
from seqvision.workflows import train_and_evaluate as train

from conftest import fast_config
from test_data_video import write_video


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", [1, 5, 17, 40])
def test_candidates_hold_every_frame_a_draw_can_pick(mode, n):
    for k in (3, 8):
        policy = SamplingPolicy(mode, num_frames=k, stride=3, clips=3)
        for train_mode in (True, False):
            candidates = set(policy.candidates(n, train=train_mode, source_fps=25.0))
            drawn = set()
            for seed in range(60):
                for clip in policy.clips_for(n, train=train_mode, rng=random.Random(seed), source_fps=25.0):
                    drawn.update(clip)
            assert drawn <= candidates, (mode, k, train_mode)
            if not train_mode or mode == "uniform":
                assert drawn == candidates  # deterministic: nothing cached in vain
    assert SamplingPolicy("random", num_frames=4).candidates(n, train=True) == list(range(n))


def _videos(root, lengths=(12, 14, 16)):
    for label, gop in (("a", 4), ("b", 8)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i, frames in enumerate(lengths):
            write_video(root / label / f"v{i}.mp4", frames=frames, gop=gop)
    return root


def _losses(run):
    rows = csv.DictReader(io.StringIO((run / "logs/version_0/metrics.csv").read_text()))
    return [float(r["train_loss"]) for r in rows if r["train_loss"]]


def test_frozen_training_on_cached_video_frames_matches_the_live_cnn(tmp_path):
    data = _videos(tmp_path / "data")
    results = {}
    for mode in ("live", "cached"):
        cfg = fast_config(data, max_epochs=3)
        cfg.model.freeze = True
        cfg.data.sampling, cfg.data.num_frames, cfg.data.eval_clips = "random", 4, 2
        cfg.data.cache = "off" if mode == "live" else str(tmp_path / "cache")
        cfg.data.feature_precision = "32"  # the live CNN's fp32 features, to compare closely
        results[mode] = train(cfg, tmp_path / mode, progress=False)
    # random clips in training: every frame of every video can be drawn, so all are cached (2 x 42)
    assert results["cached"].feature_cache["computed"] == 84
    live, cached = results["live"], results["cached"]
    assert live.val_metrics["accuracy"] == cached.val_metrics["accuracy"]
    assert live.val_metrics["num_samples"] == cached.val_metrics["num_samples"] > 0
    assert _losses(tmp_path / "live") == pytest.approx(_losses(tmp_path / "cached"), abs=1e-4)


def test_extract_videos_then_only_a_changed_video_is_recomputed(tmp_path, capsys):
    data = _videos(tmp_path / "data")
    args = ["extract", "--data", str(data), "--backbone", "tiny_cnn", "--weights", "none", "--out", str(tmp_path / "c"),
            "--no-progress", "--precision", "32", "--num-frames", "5"]

    def extract(*extra):
        import torch

        capsys.readouterr()
        with torch.random.fork_rng():  # tiny_cnn with --weights none is randomly initialised: seeded, every call has the same key
            torch.manual_seed(0)
            assert main([*args, *extra]) == 0
        return capsys.readouterr().out

    assert "extracted 30 images" in extract()  # uniform 5 of each of the 6 videos
    again = extract()
    assert "extracted 0 images" in again and "30 already cached" in again
    write_video(data / "a" / "v1.mp4", frames=20, gop=4)  # changed: its 5 frames are recomputed
    again = extract()
    assert "extracted 5 images" in again and ", 25 already cached" in again
    # every frame of every video (no --num-frames): only the frames not cached yet are computed
    args.remove("--num-frames")
    args.remove("5")
    assert "extracted 60 images" in extract()  # 12 + 20 + 16 + 12 + 14 + 16 = 90 frames, 30 were cached
    (data / "b" / "v2.mp4").write_bytes(b"\x00" * 64)
    capsys.readouterr()
    assert main(args) != 0  # one clear line naming the sample and the file, no traceback
    err = capsys.readouterr().err
    assert re.search(r"error: sample 'b/v2.mp4': .*v2.mp4: not a readable video.*--on-bad-image skip", err)
    assert main([*args, "--on-bad-image", "skip"]) == 0
    err = capsys.readouterr().err
    assert "images left out" in err and "b/v2.mp4" in err


@pytest.mark.parametrize("mode", MODES)
def test_planned_rows_are_the_rows_the_extraction_caches(tmp_path, mode):
    """What the --cache-budget of cached stage maps counts: random and segments draws cache every frame."""
    import torch

    from seqvision.data.discovery import discover
    from seqvision.data.transforms import Preprocessing
    from seqvision.features.cache import CacheKey, FeatureStore
    from seqvision.features.extract import extract_features, planned_rows
    from seqvision.models.backbones import build_backbone

    samples = discover(_videos(tmp_path / "data"))  # 2 x (12 + 14 + 16) = 84 frames
    sampling = [(SamplingPolicy(mode, num_frames=3, stride=2, clips=2), True), (SamplingPolicy("uniform", num_frames=3, clips=2), False)]
    torch.manual_seed(0)
    encoder = build_backbone("tiny_cnn", weights="none").eval()
    prep = Preprocessing(16, 16)
    store = FeatureStore(tmp_path / "c", CacheKey.for_encoder(encoder, prep))
    stats = extract_features(samples, encoder, prep, store, device="cpu", progress=False, sampling=sampling)
    assert planned_rows(samples, sampling) == stats.images == len(store.index)
    if mode in ("random", "segments"):
        assert stats.images == 84
