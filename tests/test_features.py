import os
import time

import numpy as np
import pytest
import torch

from seqvision.data.discovery import discover
from seqvision.data.transforms import Preprocessing
from seqvision.features.cache import CacheKey, FeatureStore, cache_clear, cache_info, storage_dtype
from seqvision.features.encode import encode_batch, prepare_encoder
from seqvision.features.extract import extract_features
from seqvision.models.backbones import build_backbone
from seqvision.workflows import train_and_evaluate as train

from conftest import fast_config, make_folder_dataset, write_image

PREP = Preprocessing(16, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _encoder(seed=0, pool="avg"):
    torch.manual_seed(seed)
    return build_backbone("tiny_cnn", weights="none", pool=pool).eval()


def _store(root, encoder, prep=PREP, **kw):
    return FeatureStore(root, CacheKey.for_encoder(encoder, prep, **kw))


def test_extract_then_hit_then_invalidate_only_the_changed_file(tmp_path, folder_data):
    samples = discover(folder_data)
    encoder = _encoder()
    store = _store(tmp_path / "cache", encoder)
    first = extract_features(samples, encoder, PREP, store, num_workers=0, precision="32", progress=False)
    assert (first.images, first.cached) == (18, 0)
    again = extract_features(samples, encoder, PREP, _store(tmp_path / "cache", encoder), num_workers=0, progress=False, precision="32")
    assert (again.images, again.cached) == (0, 18)

    changed = folder_data / "left" / "s1" / "f0.png"
    time.sleep(0.01)
    write_image(changed, 7)
    os.utime(changed, ns=(time.time_ns(), time.time_ns()))
    store = _store(tmp_path / "cache", encoder)
    assert list(store.missing([f.path for s in samples for f in s.frames])) == [changed]
    third = extract_features(samples, encoder, PREP, store, num_workers=0, progress=False, precision="32")
    assert (third.images, third.cached) == (1, 17)


def test_cached_rows_equal_the_live_encoder(tmp_path, folder_data):
    samples = discover(folder_data)
    encoder = _encoder()
    store = _store(tmp_path / "c", encoder)
    extract_features(samples, encoder, PREP, store, num_workers=0, precision="32", progress=False)
    from seqvision.data.images import load_image
    from seqvision.data.transforms import ClipTransform

    frames = samples[2].frames
    live = encoder.eval()(ClipTransform(PREP)([load_image(f.path) for f in frames]))
    cached = store.read(store.locate([f.path for f in frames]))
    assert torch.allclose(live, cached, atol=1e-5)


@pytest.mark.parametrize("change", ["backbone", "weights", "preprocessing", "pool", "dtype"])
def test_any_change_of_what_makes_a_vector_gives_another_key(change):
    base = CacheKey.for_encoder(_encoder(), PREP)
    other = {
        "backbone": lambda: CacheKey.for_encoder(build_backbone("resnet18", weights="none"), PREP),
        "weights": lambda: CacheKey.for_encoder(_encoder(seed=1), PREP),
        "preprocessing": lambda: CacheKey.for_encoder(_encoder(), Preprocessing(24, 24, PREP.mean, PREP.std)),
        "pool": lambda: CacheKey.for_encoder(_encoder(pool="max"), PREP),
        "dtype": lambda: CacheKey.for_encoder(_encoder(), PREP, dtype="float16"),
    }[change]()
    assert other.digest != base.digest
    assert CacheKey.for_encoder(_encoder(), PREP).digest == base.digest


def test_damaged_shard_is_reported_and_recomputed(tmp_path, folder_data):
    samples = discover(folder_data)
    encoder = _encoder()
    extract_features(samples, encoder, PREP, _store(tmp_path / "c", encoder), num_workers=0, progress=False, precision="32")
    shard = next((tmp_path / "c").glob("*/shard-*.npy"))
    data = bytearray(shard.read_bytes())
    data[-8:] = b"\x00" * 8
    shard.write_bytes(bytes(data))
    store = _store(tmp_path / "c", encoder)
    with pytest.warns(UserWarning, match="damaged"):
        assert store.read(store.locate([samples[0].frames[0].path])) is None
    assert store.corrupt and "checksum" in store.corrupt[0]
    redo = extract_features(samples, encoder, PREP, _store(tmp_path / "c", encoder), num_workers=0, progress=False, precision="32")
    assert redo.images == 18


def test_uncommitted_shard_is_ignored(tmp_path, folder_data):
    samples = discover(folder_data)
    encoder = _encoder()
    store = _store(tmp_path / "c", encoder)
    (store.dir / "shard-deadbeef.npy").write_bytes(b"half a shard")  # a crash before the commit record
    stats = extract_features(samples, encoder, PREP, store, num_workers=0, progress=False, precision="32")
    assert stats.images == 18


def test_bf16_features_are_close_to_fp32():
    encoder = prepare_encoder(_encoder(), torch.device("cpu"))
    torch.manual_seed(0)
    images = torch.randn(8, 3, 16, 16)
    fp32 = encode_batch(encoder, images, torch.float32)
    bf16 = encode_batch(encoder, images, torch.bfloat16)
    assert torch.nn.functional.cosine_similarity(fp32, bf16, dim=-1).min() > 0.99


def test_cache_info_and_clear(tmp_path, folder_data):
    encoder = _encoder()
    extract_features(discover(folder_data), encoder, PREP, _store(tmp_path / "c", encoder), num_workers=0, progress=False, precision="32")
    (info,) = cache_info(tmp_path / "c")
    assert info["entries"] == 18 and info["backbone"] == "tiny_cnn" and info["bytes"] > 0
    assert cache_clear(tmp_path / "c") == info["bytes"]
    assert cache_info(tmp_path / "c") == []


def test_frozen_training_on_cached_features_matches_live_training(tmp_path):
    data = make_folder_dataset(tmp_path / "data", per_label=4)
    results = {}
    for mode in ("live", "cached"):
        cfg = fast_config(data, max_epochs=3)
        cfg.model.freeze = True
        cfg.data.cache = "off" if mode == "live" else str(tmp_path / "cache")
        cfg.data.feature_precision = "32"  # the live CNN's fp32 features, to compare bit for bit
        results[mode] = train(cfg, tmp_path / mode, progress=False)
    assert results["live"].feature_cache is None
    assert results["cached"].feature_cache["computed"] == 22  # 2 labels x (2+3+4+2) images
    live, cached = results["live"].val_metrics, results["cached"].val_metrics
    assert live["accuracy"] == cached["accuracy"]
    live_loss = [r for r in (tmp_path / "live/logs/version_0/metrics.csv").read_text().splitlines()]
    cached_loss = [r for r in (tmp_path / "cached/logs/version_0/metrics.csv").read_text().splitlines()]
    import csv
    import io

    def losses(lines):
        return [float(r["train_loss"]) for r in csv.DictReader(io.StringIO("\n".join(lines))) if r["train_loss"]]

    assert losses(live_loss) == pytest.approx(losses(cached_loss), abs=1e-4)


def test_frozen_with_explicit_augmentation_runs_live(tmp_path, caplog):
    data = make_folder_dataset(tmp_path / "data")
    cfg = fast_config(data, max_epochs=1)
    cfg.model.freeze = True
    cfg.data.augment = True
    cfg.data.cache = str(tmp_path / "cache")
    with caplog.at_level("WARNING", logger="seqvision"):
        result = train(cfg, tmp_path / "run", progress=False)
    assert result.feature_cache is None and "--no-augment" in caplog.text


def test_prefetch_keeps_order_and_reraises_errors():
    from seqvision.features.loading import prefetch

    assert list(prefetch(iter(range(50)))) == list(range(50))

    def broken():
        yield 1
        raise RuntimeError("decode failed")

    with pytest.raises(RuntimeError, match="decode failed"):
        list(prefetch(broken()))
    gen = prefetch(iter(range(1000)), depth=1)
    assert next(gen) == 0
    gen.close()  # leaving early stops the producer thread


def test_bad_image_during_extraction_names_it_or_is_skipped(tmp_path, folder_data):
    from seqvision.errors import DataError

    (folder_data / "right" / "s2" / "f3.png").write_bytes(b"nope")
    samples = discover(folder_data)
    encoder = _encoder()
    with pytest.raises(DataError, match=r"'right/s2'.*f3.png"):
        extract_features(samples, encoder, PREP, _store(tmp_path / "c", encoder), num_workers=0, progress=False, precision="32")
    stats = extract_features(samples, encoder, PREP, _store(tmp_path / "c", encoder), num_workers=0, progress=False,
                             precision="32", on_bad_image="skip")
    assert len(stats.skipped) == 1 and stats.images + stats.cached == 17


def test_read_gathers_rows_across_shards_in_the_asked_order(tmp_path):
    store = FeatureStore(tmp_path / "c", CacheKey.for_encoder(_encoder(), PREP, dtype="float16"), shard_rows=2)
    rows = torch.arange(20, dtype=torch.float32).reshape(5, 4)
    store.add([f"id{i}" for i in range(5)], rows)
    store.flush()  # shards of 2, 2 and 1 rows
    order = [4, 0, 3, 3, 1]
    locations = [store.index[f"id{i}"] for i in order]
    assert len({shard for shard, _ in locations}) == 3
    got = store.read(locations)
    assert got.dtype == torch.float32 and torch.equal(got, rows[order])


@pytest.mark.parametrize("rows, why", [
    (torch.tensor([[1.0, 70000.0], [2.0, 3.0]]), "beyond float16's largest"),  # 70000 -> inf in float16
    (torch.full((2, 200), 3e-9), "below float16's smallest normal"),  # -> 0 in float16
])
def test_a_float16_cache_whose_rows_float16_cannot_hold_stores_float32_and_says_so_once(tmp_path, caplog, rows, why):
    store = FeatureStore(tmp_path / "c", CacheKey.for_encoder(_encoder(), PREP, dtype="float16"), shard_rows=2)
    store.add(["a", "b"], torch.ones(2, rows.shape[1]))  # fits: float16
    with caplog.at_level("WARNING", logger="seqvision"):
        store.add(["c", "d"], rows)
        store.add(["e", "f"], rows * 2)
    store.flush()
    said = [r.getMessage() for r in caplog.records if "not float16" in r.getMessage()]
    assert len(said) == 1 and why in said[0] and str(store.dir) in said[0]
    assert store.dtype == "float32" and store.key.dtype == "float16"  # the same key: the same folder
    got = store.read([store.index[i] for i in "abcdef"])
    assert torch.equal(got, torch.cat([torch.ones(2, rows.shape[1]), rows, rows * 2]))  # exact, no inf, no 0
    (info,) = cache_info(tmp_path / "c")
    assert info["dtype"] == "float32"
    assert FeatureStore(tmp_path / "c", store.key).dtype == "float32"  # a later run goes on in float32, unsaid
    assert storage_dtype(tmp_path / "c", store.key) == "float32"  # what a disk budget counts for these rows


def test_a_float16_cache_keeps_float16_for_rows_it_can_hold(tmp_path, caplog):
    """Real ReLU maps: mostly O(1), a few values near zero (under 1 %) that float16 may round to 0."""
    store = FeatureStore(tmp_path / "c", CacheKey.for_encoder(_encoder(), PREP, dtype="float16"))
    rows = torch.cat([torch.rand(4, 995) * 20 + 1e-3, torch.full((4, 5), 1e-9)], dim=1)
    with caplog.at_level("WARNING", logger="seqvision"):
        store.add(list("abcd"), rows)
        store.flush()
    assert store.dtype == "float16" and not [r for r in caplog.records if "float16" in r.getMessage()]
    (shard,) = store.dir.glob("shard-*.npy")
    assert np.load(shard).dtype == np.float16
    assert torch.allclose(store.read([store.index[i] for i in "abcd"]), rows, rtol=1e-3, atol=1e-8)


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_threaded_batches_equal_the_per_image_transform_and_close_holes(tmp_path, folder_data, memory_format):
    from seqvision.data.images import load_image
    from seqvision.data.transforms import ClipTransform
    from seqvision.features.loading import ThreadedBatches

    paths = sorted(folder_data.rglob("*.png"))[:7]
    paths[3].write_bytes(b"not an image")
    todo = {p: f"id-{p.parent.name}-{p.name}" for p in paths}
    batches = list(ThreadedBatches(todo, {p: "s" for p in paths}, PREP, batch_size=5, threads=2, memory_format=memory_format))
    assert [len(ids) for ids, *_ in batches] == [4, 2]  # the bad file leaves no hole
    identities = [i for ids, *_ in batches for i in ids]
    assert identities == [todo[p] for p in paths if p != paths[3]]
    assert batches[1][1].is_contiguous(memory_format=memory_format)  # the layout the CNN reads
    images = torch.cat([x for _, x, _, _ in batches])
    transform = ClipTransform(PREP)
    expected = torch.stack([transform([load_image(p)])[0] for p in paths if p != paths[3]])
    assert torch.equal(images, expected)
    errors = [e for _, _, errs, _ in batches for e in errs]
    assert len(errors) == 1 and str(paths[3]) in errors[0] and "'s'" in errors[0]


def test_extract_from_python_fills_the_cache_that_train_freeze_reads(tmp_path, monkeypatch):
    """`seqvision.extract` and `train --freeze` with default precisions agree on the key: no image is
    computed twice (auto = bf16 where the CPU is fast at it, in both)."""
    import seqvision
    import seqvision.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)  # auto = bf16 on any CPU: the case that differed
    data = make_folder_dataset(tmp_path / "data", per_label=4)
    cfg = fast_config(data, max_epochs=1)  # one config for both: the extraction fills what training reads
    cfg.model.freeze = True
    cfg.data.cache = str(tmp_path / "cache")
    torch.manual_seed(0)  # tiny_cnn with weights=none is random: seed it as train() seeds its model
    stats, store = seqvision.extract(cfg, progress=False)
    assert stats.images == 22 and stats.cached == 0 and store.dir.parent == tmp_path / "cache"
    assert store.key.compute == "bfloat16"
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.feature_cache == {**result.feature_cache, "dir": str(store.dir), "computed": 0, "cached": 22}


def test_rebatch_packs_small_chunks_into_full_batches_and_passes_errors_through():
    from seqvision.features.loading import rebatch

    def chunk(first, n):
        return [f"id{i}" for i in range(first, first + n)], torch.arange(first, first + n).float()[:, None], [], []

    source = [chunk(0, 3), ([], torch.empty(0), ["bad video"], ["a note"]), chunk(3, 5), chunk(8, 2)]
    out = list(rebatch(iter(source), 4))
    assert [len(ids) for ids, *_ in out] == [0, 4, 4, 2]
    assert out[0][2:] == (["bad video"], ["a note"])
    assert [i for ids, *_ in out for i in ids] == [f"id{i}" for i in range(10)]
    assert torch.equal(torch.cat([x for ids, x, *_ in out if ids])[:, 0], torch.arange(10).float())


def test_extraction_leaves_torch_thread_count_as_it_found_it(tmp_path, folder_data):
    import threading

    found = torch.get_num_threads()
    torch.set_num_threads(3)  # not 1, which the decoding threads set: the suite's workers may run with 1
    try:
        encoder = _encoder()
        extract_features(discover(folder_data), encoder, PREP, _store(tmp_path / "c", encoder), num_workers=0, progress=False, precision="32")
        seen = []
        thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        assert seen == [3] and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(found)


def test_steady_rate_of_a_single_batch_is_its_rate():
    from seqvision.features.extract import ExtractStats

    stats = ExtractStats(images=10, seconds=2.0, first_batch_images=10, first_batch_seconds=1.9)
    assert stats.steady_images_per_second == stats.images_per_second == 5.0
    stats = ExtractStats(images=30, seconds=3.0, first_batch_images=10, first_batch_seconds=1.0)
    assert stats.steady_images_per_second == 10.0


_RANK_SCRIPT = """
import json, sys, torch
from seqvision.data.discovery import discover
from seqvision.features.cache import CacheKey, FeatureStore
from seqvision.features.extract import extract_features
from seqvision.models.backbones import build_backbone
from seqvision.data.transforms import Preprocessing
torch.manual_seed(0)
encoder = build_backbone("tiny_cnn", weights="none").eval()
prep = Preprocessing(16, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
samples = discover(sys.argv[1])
store = FeatureStore(sys.argv[2], CacheKey.for_encoder(encoder, prep))
stats = extract_features(samples, encoder, prep, store, num_workers=0, precision="32", progress=False, stall_timeout=300)
print(json.dumps({"computed": stats.images, "by_peers": stats.by_peers, "cached": stats.cached,
                  "missing": len(store.missing(f.path for s in samples for f in s.frames))}))
"""


def test_torchrun_ranks_share_the_extraction_instead_of_repeating_it(tmp_path, folder_data):
    import json
    import subprocess
    import sys

    # what torchrun sets (the two processes also share their parent, as torchrun's do)
    env = {**os.environ, "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511",
           "TORCHELASTIC_RUN_ID": "test"}
    procs = [
        subprocess.Popen([sys.executable, "-c", _RANK_SCRIPT, str(folder_data), str(tmp_path / "cache")],
                         env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    images = len({f.path for s in discover(folder_data) for f in s.frames})
    assert sum(r["computed"] for r in results) == images == 18  # each image once, not once per process
    assert all(r["computed"] > 0 for r in results) and all(r["missing"] == 0 for r in results)
    assert [r["by_peers"] for r in results] == [results[1]["computed"], results[0]["computed"]]
    assert all(r["cached"] == 0 for r in results)  # nothing was there before this launch


def test_a_peer_that_never_finishes_is_not_waited_for_forever(tmp_path, folder_data, monkeypatch, caplog):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "alone")
    samples = discover(folder_data)
    encoder = _encoder()
    store = _store(tmp_path / "cache", encoder)
    with caplog.at_level("WARNING", logger="seqvision"):
        stats = extract_features(samples, encoder, PREP, store, num_workers=0, precision="32", progress=False,
                                 launch=(0, 2), stall_timeout=0.5)
    assert stats.images == 18 and not store.missing(f.path for s in samples for f in s.frames)
    assert "1 of 2 processes have not finished their share" in caplog.text


def test_lightning_started_processes_do_not_share(monkeypatch):
    from seqvision.features.sharing import launch_rank

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "4")  # Lightning's launcher sets these, not LOCAL_WORLD_SIZE
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launch_rank() == (0, 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: ranks share per node (the cache is the node's)
    assert launch_rank() == (1, 2)


def test_extract_from_python_takes_the_run_config_and_says_so(tmp_path):
    import seqvision

    with pytest.raises(TypeError, match="takes the run's RunConfig"):
        seqvision.extract(str(tmp_path))


def test_extraction_runs_inside_a_callers_inference_mode(tmp_path, folder_data):
    """Inference mode is per thread: the decoding threads must still fill a batch the caller's mode made."""
    samples = discover(folder_data)
    encoder = _encoder()
    with torch.inference_mode():
        stats = extract_features(samples, encoder, PREP, _store(tmp_path / "cache", encoder), num_workers=0, precision="32", progress=False)
    assert stats.images == 18
    plain = extract_features(samples, encoder, PREP, _store(tmp_path / "plain", encoder), num_workers=0, precision="32", progress=False)
    assert plain.images == 18
