"""Any number of images per sample in bounded memory: inference loads and encodes pieces, training
estimates its largest batch before the first step."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from seqvision.cli import main
from seqvision.config import ModelConfig
from seqvision.errors import ConfigError
from seqvision.data.dataset import SequenceDataset
from seqvision.data.discovery import discover
from seqvision.data.pieces import PieceDataset, piece_batches, plan_pieces
from seqvision.tasks import TargetSpec
from seqvision.data.transforms import ClipTransform, Preprocessing
from seqvision.inference.predictor import Predictor
from seqvision.models.backbones import build_backbone
from seqvision.models.memory import activation_profile, inference_chunk_size
from seqvision.workflows import train_and_evaluate as train

from conftest import fast_config, make_folder_dataset, write_image

ROOT = Path(__file__).resolve().parents[1]


def _predictor(data: Path, head: str, **model):
    """A Predictor built directly (no training): the tiny CNN and ``head`` with random weights, fp32."""
    samples = discover(str(data))
    spec = TargetSpec.infer(samples)
    cfg = fast_config(data)
    cfg.model = ModelConfig(backbone="tiny_cnn", weights="none", hidden_size=8, head=head, d_model=8, nhead=2, **model)
    torch.manual_seed(0)
    net = cfg.model.build_model(spec.num_outputs)
    prep = Preprocessing(image_size=16, resize_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return Predictor(net, cfg=cfg, spec=spec, preprocessing=prep, precision="32"), samples


@pytest.mark.parametrize("head", ["lstm", "gru", "attention", "transformer", "mean", "max"])
def test_pieces_give_the_unchunked_outputs_for_every_head_with_padding(tmp_path, head):
    data = make_folder_dataset(tmp_path / "data", per_label=3, lengths=(9, 2, 13))  # padded batches of 4
    predictor, samples = _predictor(data, head)
    predictor.chunk_size = 10_000
    whole = predictor.run(samples, batch_size=4, with_targets=True)
    for chunk in (1, 5):
        predictor.chunk_size = chunk
        pieces = predictor.run(samples, batch_size=4, with_targets=True)
        assert pieces.sample_ids == whole.sample_ids
        assert torch.allclose(pieces.outputs, whole.outputs, atol=1e-5), (head, chunk)
        assert torch.equal(pieces.targets, whole.targets)
        assert pieces.sample_frames == whole.sample_frames


def test_per_image_outputs_and_multi_clip_evaluation_in_pieces(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_label=2, lengths=(11, 6))
    predictor, samples = _predictor(data, "lstm")
    predictor.cfg.data.sampling, predictor.cfg.data.num_frames, predictor.cfg.data.eval_clips = "random", 4, 3
    predictor.chunk_size = 10_000
    whole = predictor.run(samples, batch_size=3, keep_features=True)
    predictor.chunk_size = 3  # a clip of 4 images is two pieces; the sample's 3 clips are merged again
    pieces = predictor.run(samples, batch_size=3, keep_features=True)
    assert torch.allclose(pieces.outputs, whole.outputs, atol=1e-5)
    assert [i for i, _ in pieces.clips] == [i for i, _ in whole.clips]
    assert all(torch.allclose(a, b, atol=1e-6) for (_, a), (_, b) in zip(pieces.clips, whole.clips))


def test_pieces_are_bounded_ordered_and_packed(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_label=2, lengths=(7, 2))
    samples = discover(str(data))
    base = SequenceDataset(samples, ClipTransform(Preprocessing(image_size=16, resize_size=16)))
    pieces, plans = plan_pieces(base, 3)
    assert all(1 <= len(p.frames) <= 3 for p in pieces)
    for index, clips in enumerate(plans):  # the pieces of a sample, in order, are exactly its clips' frames
        assert [f for p in pieces if p.sample == index for f in p.frames] == [f for c in clips for f in c]
        assert [p.last for p in pieces if p.sample == index][-1] is True
    assert [p.sample for p in pieces] == sorted(p.sample for p in pieces)
    batches = piece_batches(pieces, 3)
    assert [i for b in batches for i in b] == list(range(len(pieces)))
    assert all(sum(len(pieces[i].frames) for i in b) <= 3 for b in batches)


def test_a_piece_of_a_mixed_size_clip_is_the_images_of_the_whole_clip(tmp_path):
    folder = tmp_path / "data" / "a" / "s0"
    for t, size in enumerate((16, 24, 40, 16, 20)):  # different sizes (multi-view photos often are)
        write_image(folder / f"f{t}.png", (30 * t, 200 - 30 * t, 90), size=size)
    samples = discover(str(tmp_path / "data"))
    prep = Preprocessing(image_size=12, resize_size=14)
    base = SequenceDataset(samples, ClipTransform(prep))
    whole = base[0]["clip"]
    loaded = [PieceDataset(base, 2)[i]["images"] for i in range(3)]
    assert torch.equal(torch.cat(loaded), whole)
    # and each image alone (how the feature cache transforms it) is the same image
    from seqvision.data.images import load_image

    for t, path in enumerate(sorted(folder.iterdir())):
        assert torch.equal(ClipTransform(prep)([load_image(path)])[0], whole[t])


def test_video_samples_in_pieces_equal_the_whole_clip(tmp_path):
    pytest.importorskip("av")
    from test_data_video import write_video

    for label, frames in (("a", 20), ("b", 14)):
        (tmp_path / "data" / label).mkdir(parents=True)
        write_video(tmp_path / "data" / label / f"v{frames}.mp4", frames=frames, fps=10, size=32)
    predictor, samples = _predictor(tmp_path / "data", "gru")
    predictor.chunk_size = 10_000
    whole = predictor.run(samples, batch_size=2)
    predictor.chunk_size = 6
    pieces = predictor.run(samples, batch_size=2)
    assert torch.allclose(pieces.outputs, whole.outputs, atol=1e-5)
    assert pieces.sample_frames == whole.sample_frames


def test_a_bad_image_in_a_piece_names_the_sample_or_is_skipped(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_label=2, lengths=(8,))
    bad = sorted((data / "left" / "s0").iterdir())[5]
    bad.write_bytes(b"not an image")
    predictor, samples = _predictor(data, "lstm")
    predictor.chunk_size = 3
    from seqvision.errors import DataError

    with pytest.raises(DataError, match=r"'left/s0'.*f5\.png"):
        predictor.run(samples)
    out = predictor.run(samples, on_bad_image="skip")
    assert len(out.sample_ids) == 4 and any("f5.png" in m for m in out.skipped)
    assert len(out.sample_frames["left/s0"]) == 7


def test_pieces_load_in_worker_processes(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_label=2, lengths=(7, 3))
    predictor, samples = _predictor(data, "lstm")
    predictor.chunk_size = 4
    alone = predictor.run(samples, batch_size=2)
    workers = predictor.run(samples, batch_size=2, num_workers=1)
    assert torch.allclose(alone.outputs, workers.outputs, atol=1e-6)


def test_the_default_chunk_follows_the_free_memory(monkeypatch):
    import seqvision.models.memory as memory

    encoder = build_backbone("tiny_cnn", weights="none")
    profile = activation_profile(encoder, image_size=64, training=False)
    per_image = profile.inference_bytes + 2 * profile.input_bytes
    monkeypatch.setattr(memory, "available_memory", lambda device: 64 << 30)
    assert inference_chunk_size(encoder, torch.device("cpu"), image_size=64) == 64  # the CPU cap
    monkeypatch.setattr(memory, "available_memory", lambda device: 4 * 10 * per_image)
    assert inference_chunk_size(encoder, torch.device("cpu"), image_size=64) == 10
    monkeypatch.setattr(memory, "available_memory", lambda device: 1)
    assert inference_chunk_size(encoder, torch.device("cpu"), image_size=64) == 1


def test_the_activation_profile_counts_what_training_keeps():
    encoder = build_backbone("tiny_cnn", weights="none")
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    small, large = activation_profile(encoder, image_size=16), activation_profile(encoder, image_size=32)
    assert small.training_bytes > small.inference_bytes > 0
    assert 3.5 < large.training_bytes / small.training_bytes < 4.5  # activations grow with the pixels
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())  # BatchNorm untouched
    encoder.set_trainable("none")
    assert activation_profile(encoder, image_size=16).training_bytes == 0  # frozen: nothing kept


PREDICT_RSS = textwrap.dedent(
    """
    import json, resource, sys
    from seqvision.inference.predictor import Predictor
    from seqvision.data.discovery import discover_inputs
    predictor = Predictor.load(sys.argv[1], precision="32")
    predictor.chunk_size = int(sys.argv[3])
    samples = discover_inputs([sys.argv[2]])  # one sample folder, as `seqvision predict CKPT FOLDER` takes it
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = predictor.run(samples, batch_size=1)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"grew_kb": after - before, "outputs": out.outputs.tolist()}))
    """
)


@pytest.mark.slow
def test_predict_on_thousands_of_images_stays_under_a_measured_bound(tmp_path):
    data = make_folder_dataset(tmp_path / "train", per_label=2, lengths=(3,))
    cfg = fast_config(data, max_epochs=1)
    cfg.data.image_size = cfg.data.resize_size = 64
    result = train(cfg, tmp_path / "run", progress=False)
    sample = tmp_path / "long" / "s0"
    n = 2500
    for t in range(n):
        write_image(sample / f"f{t}.png", (t % 256, (7 * t) % 256, 90))
    whole_sample = n * 3 * 64 * 64 * 4  # bytes of the sample's images if loaded at once: 123 MB

    def run(chunk: int) -> dict:
        proc = subprocess.run(
            [sys.executable, "-c", PREDICT_RSS, str(result.best_checkpoint), str(sample), str(chunk)],
            capture_output=True, text=True, cwd=ROOT, timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    chunked, whole = run(32), run(n)
    assert chunked["grew_kb"] * 1024 < whole_sample / 4, chunked["grew_kb"]  # bounded by the chunk, not the sample
    assert whole["grew_kb"] * 1024 > whole_sample / 2  # the measurement sees a whole sample when there is one
    assert torch.allclose(torch.tensor(chunked["outputs"]), torch.tensor(whole["outputs"]), atol=1e-5)


def _needs(held: int) -> float:
    """GB the tiny CNN's largest batch below (40 images of 16 px, no workers) needs with ``held`` images'
    activations kept at once: what the budgets of these tests are made from."""
    profile = activation_profile(build_backbone("tiny_cnn", weights="none"), image_size=16)
    return (40 * profile.input_bytes + held * profile.training_bytes) / 2**30


def test_a_training_batch_over_the_budget_turns_on_checkpointed_chunks_and_trains(tmp_path, caplog):
    data = make_folder_dataset(tmp_path / "data", per_label=4, lengths=(8, 10, 12))
    assert _needs(16) > _needs(8) * 1.01
    cfg = fast_config(data, memory_budget=_needs(8) * 1.01)  # room for 8 images' activations, not 16 or all 40
    with caplog.at_level("WARNING", logger="seqvision"):
        result = train(cfg, tmp_path / "run", progress=False)
    said = [r.getMessage() for r in caplog.records if "largest training batch" in r.getMessage()]
    assert len(said) == 1 and "training batch (40 images" in said[0] and "'right/s2' with 12" in said[0] and "--chunk-size 8 --checkpointing" in said[0]
    assert result.best_checkpoint.exists() and result.val_metrics is not None
    # the training chunk is the encoder's, chosen for training's memory; prediction chooses its own
    assert cfg.model.chunk_size is None and "chunk_size: null" in (tmp_path / "run" / "config.yaml").read_text()
    assert Predictor.load(result.best_checkpoint).chunk_size > 8


def test_an_automatic_chunk_holds_training_batchnorm_in_evaluation_mode_and_says_so(tmp_path, caplog):
    """Chunks would normalize by each chunk's statistics, so the maths would follow the free memory: a run
    that chunks on its own holds BatchNorm on its running statistics instead (recorded in its config)."""
    data = make_folder_dataset(tmp_path / "data", per_label=4, lengths=(8, 10, 12))
    cfg = fast_config(data, memory_budget=_needs(8) * 1.01)  # the tiny CNN's BatchNorm trains (random weights)
    with caplog.at_level("WARNING", logger="seqvision"):
        result = train(cfg, tmp_path / "run", progress=False)
    said = [r.getMessage() for r in caplog.records if "largest training batch" in r.getMessage()]
    assert len(said) == 1 and "--chunk-size 8 --checkpointing" in said[0] and "BatchNorm held in evaluation mode" in said[0]
    assert "freeze_bn: true" in (tmp_path / "run" / "config.yaml").read_text()
    norms = {n: b for n, b in Predictor.load(result.best_checkpoint, precision="32").model.encoder.named_buffers()
             if n.endswith(("running_mean", "running_var"))}
    assert norms and all(torch.equal(b, torch.zeros_like(b) if n.endswith("mean") else torch.ones_like(b)) for n, b in norms.items())


def test_batchnorm_the_user_asked_to_train_is_not_chunked_silently(tmp_path, caplog):
    data = make_folder_dataset(tmp_path / "data", per_label=4, lengths=(8, 10, 12))
    cfg = fast_config(data, max_epochs=1, memory_budget=_needs(8) * 1.01)
    cfg.model.freeze_bn = False  # --no-freeze-bn: an automatic chunk would change its maths
    with pytest.raises(ConfigError, match="--no-freeze-bn.*--chunk-size.*--batch-size"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    cfg.model.chunk_size, cfg.model.checkpointing = 8, True  # an explicit chunk: today's maths, said in one line
    with caplog.at_level("WARNING", logger="seqvision"):
        train(cfg, tmp_path / "run2", progress=False)
    said = [r.getMessage() for r in caplog.records if "by that chunk's statistics" in r.getMessage()]
    assert len(said) == 1 and "--chunk-size 8" in said[0] and "--freeze-bn" in said[0]


def test_a_training_batch_that_cannot_fit_stops_before_anything_is_written(tmp_path, capsys):
    data = make_folder_dataset(tmp_path / "data", per_label=4, lengths=(8, 10, 12))
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--backbone", "tiny_cnn", "--weights", "none",
                 "--image-size", "16", "--max-epochs", "1", "--num-workers", "0", "--no-progress", "--accelerator", "cpu",
                 "--batch-size", "4", "--memory-budget", str(_needs(1) * 0.9)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and "Traceback" not in err and len(lines) == 1, err
    line = lines[0]
    import re

    found = re.search(r"\((\d+) images: the 4 longest samples, the longest '(\w+)/(s\d)' with (\d+)\)", line)
    assert found, line
    label, name, count = found.group(2), found.group(3), int(found.group(4))
    assert count == len(list((data / label / name).iterdir())) and 3 * count <= int(found.group(1)) <= 4 * count
    for part in ("--num-frames", "--batch-size", "--memory-budget"):
        assert part in line, line
    assert not (tmp_path / "run").exists()


def test_a_frozen_backbone_on_the_cache_is_not_estimated(tmp_path, monkeypatch):
    import seqvision.training.memory as memory

    monkeypatch.setattr(memory, "activation_profile", lambda *a, **k: pytest.fail("features only: no CNN estimate"))
    data = make_folder_dataset(tmp_path / "data", per_label=3)
    cfg = fast_config(data, max_epochs=1, memory_budget=1e-6)
    cfg.model.freeze, cfg.data.augment = True, False
    train(cfg, tmp_path / "run", progress=False)  # would stop (a 1 KB budget) if the CNN were estimated


def test_a_long_validation_batch_is_estimated_too():
    from seqvision.data.samples import FrameRef, Sample
    from seqvision.training.memory import plan_training_memory

    def samples(n: int, length: int, prefix: str) -> list[Sample]:  # frames are only counted, never read
        return [Sample(f"{prefix}{i}", [FrameRef(Path(f"/nowhere/{prefix}{i}/{t}.png")) for t in range(length)], label="a") for i in range(n)]

    cfg = fast_config("unused", batch_size=2)
    encoder = build_backbone("tiny_cnn", weights="none")
    encoder.preprocessing = Preprocessing(image_size=16, resize_size=16)  # the run's, as fit sets it
    profile = activation_profile(encoder)
    splits = {"train": samples(4, 3, "t"), "val": samples(2, 200, "v")}  # training batch: 6 images; validation: 400
    train_need = 6 * profile.input_bytes + 6 * profile.training_bytes
    val_need = 400 * profile.input_bytes + 400 * profile.inference_bytes
    assert val_need > 2 * train_need
    cfg.train.memory_budget = (400 * profile.input_bytes + 64 * profile.inference_bytes) / 2**30 * 1.001
    said = plan_training_memory(cfg, encoder, splits, device=torch.device("cpu"), num_workers=0)
    assert said and "validation batch (400 images" in said and "with 200)" in said
    assert encoder.chunk_size == 64 and cfg.model.chunk_size is None  # the encoder trains chunked; the config is the user's


def test_the_balanced_sampler_can_fill_a_batch_with_the_longest_sample():
    from seqvision.data.samples import FrameRef, Sample
    from seqvision.training.memory import largest_batch

    samples = [Sample(f"s{n}", [FrameRef(Path(f"/nowhere/{n}/{t}.png")) for t in range(n)], label="a") for n in (2, 3, 9)]
    cfg = fast_config("unused", batch_size=3)
    assert largest_batch(samples, cfg).images == 14
    cfg.train.balanced_sampler = True  # draws with replacement
    assert largest_batch(samples, cfg).images == 27


def test_the_memory_probe_leaves_the_random_state_alone():
    encoder = build_backbone("tiny_cnn", weights="none")
    encoder.post_pool = torch.nn.Dropout(0.5)  # a layer that draws random numbers in training mode
    torch.manual_seed(3)
    before = torch.get_rng_state()
    activation_profile(encoder)
    assert torch.equal(torch.get_rng_state(), before)


def test_a_truncated_video_in_pieces_repeats_its_last_frame_like_the_whole_clip(tmp_path):
    pytest.importorskip("av")
    from test_data_video import write_video

    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "b").mkdir(parents=True)
    video = write_video(tmp_path / "v.mkv", frames=40, gop=4)
    data = video.read_bytes()
    (tmp_path / "data" / "a" / "cut.mkv").write_bytes(data[: len(data) * 2 // 3])  # headers say 40 frames
    write_video(tmp_path / "data" / "b" / "whole.mkv", frames=12, gop=4)
    predictor, samples = _predictor(tmp_path / "data", "lstm")
    predictor.chunk_size = 10_000
    whole = predictor.run(samples, batch_size=2)
    predictor.chunk_size = 6  # the last pieces of the cut file lie wholly past its last decodable frame
    pieces = predictor.run(samples, batch_size=2)
    assert torch.allclose(pieces.outputs, whole.outputs, atol=1e-5)
    repeated = [m for m in pieces.skipped if "the last frame is repeated" in m]
    assert repeated and len(repeated) == len(set(repeated))  # said, and each message once
