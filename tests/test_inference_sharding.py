"""The merge of torchrun's shares: every row of every share is used, and a sample without rows must have
been left out by --on-bad-image skip; anything else is refused naming the rank and the samples."""

from dataclasses import replace

import pytest
import torch

from seqvision.config import ModelConfig
from seqvision.data.discovery import discover
from seqvision.data.transforms import Preprocessing
from seqvision.errors import DataError
from seqvision.inference.predictor import Predictor
from seqvision.inference.sharding import merge
from seqvision.tasks.spec import TargetSpec

from conftest import fast_config, make_folder_dataset

WORLD = 2


@pytest.fixture(scope="module")
def shares(tmp_path_factory):
    """6 samples (one whose only image is unreadable, left out by --on-bad-image skip), predicted whole and
    as the two shares of a 2-process run, by a tiny untrained model."""
    data = make_folder_dataset(tmp_path_factory.mktemp("shard") / "data", per_label=3)
    samples = discover(str(data))
    broken = samples[3]
    for frame in broken.frames:
        frame.path.write_bytes(b"not an image")
    spec = TargetSpec.infer(samples)
    cfg = fast_config(data)
    cfg.model = ModelConfig(backbone="tiny_cnn", weights="none", hidden_size=8)
    torch.manual_seed(0)
    predictor = Predictor(cfg.model.build_model(spec.num_outputs), cfg=cfg, spec=spec, precision="32",
                          preprocessing=Preprocessing(image_size=16, resize_size=16))
    run = dict(with_targets=True, on_bad_image="skip")
    whole = predictor.run(samples, **run)
    parts = []
    for rank in range(WORLD):
        mine = list(range(rank, len(samples), WORLD))
        parts.append((mine, predictor.run([samples[i] for i in mine], **run)))
    return samples, whole, parts, broken.id


def _tampered(preds, keep):
    """``preds`` with only the rows ``keep`` (a list of row numbers, in the order given)."""
    return replace(preds, sample_ids=[preds.sample_ids[r] for r in keep], outputs=preds.outputs[keep],
                   targets=preds.targets[keep])


def test_shares_with_a_left_out_sample_merge_like_one_process(shares):
    samples, whole, parts, broken = shares
    assert broken in parts[1][1].left_out and broken not in whole.sample_ids  # the data layer said it, by id
    merged = merge(parts, samples)
    assert merged.sample_ids == whole.sample_ids and merged.left_out == whole.left_out == [broken]
    assert torch.allclose(merged.outputs, whole.outputs, atol=1e-6)


def test_a_row_no_sample_took_is_refused_naming_the_rank(shares):
    samples, _, parts, _ = shares
    mine, preds = parts[0]
    extra = replace(_tampered(preds, list(range(len(preds.sample_ids))) + [0]),
                    sample_ids=preds.sample_ids + ["somebody else"])
    with pytest.raises(DataError, match=r"rank 0's predictions .* 1 row\(s\) no sample of its share took \(ids 'somebody else'\)"):
        merge([(mine, extra), parts[1]], samples)


def test_a_sample_whose_rows_are_missing_is_refused_naming_the_rank_and_the_sample(shares):
    samples, _, parts, _ = shares
    mine, preds = parts[0]
    lost = preds.sample_ids[-1]  # its last sample's row dropped: nothing is left over, one sample has none
    with pytest.raises(DataError, match=rf"rank 0's .* no rows for 1 of its samples, not left out either \('{lost}'\)"):
        merge([(mine, _tampered(preds, list(range(len(preds.sample_ids) - 1)))), parts[1]], samples)


def test_rows_in_another_order_than_the_share_are_refused(shares):
    """What a process that discovered the samples in another order sends: its rows do not follow the
    indices; matched in order, the first sample's rows would swallow nothing and the rest be dropped."""
    samples, _, parts, _ = shares
    mine, preds = parts[0]
    reversed_rows = _tampered(preds, list(reversed(range(len(preds.sample_ids)))))
    with pytest.raises(DataError, match="rank 0's predictions do not match .* same samples, in the same order"):
        merge([(mine, reversed_rows), parts[1]], samples)


def test_a_share_of_more_samples_than_here_or_misaligned_rows_is_refused(shares):
    samples, _, parts, _ = shares
    mine, preds = parts[1]
    with pytest.raises(DataError, match=f"rank 1 predicted sample number {len(samples) + 1}, but there are {len(samples)}"):
        merge([parts[0], (mine + [len(samples) + 1], preds)], samples)
    with pytest.raises(DataError, match=r"rank 1 returned rows that do not line up \(2 ids, 1 outputs, 2 targets\)"):
        merge([parts[0], (mine, replace(preds, outputs=preds.outputs[:1]))], samples)
