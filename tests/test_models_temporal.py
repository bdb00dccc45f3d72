"""Temporal heads (every registered one) and the grid2 pooling of the image encoder."""

import pytest
import torch
from torch import nn

from seqvision.errors import ConfigError
from seqvision.models.backbones import build_backbone
from seqvision.models.temporal import available_heads, build_temporal_head, register_head

F = 6  # per-image feature size
# Tiny sizes for every head. The recurrent options are the common ones: heads without them drop them,
# as when the composite passes the model config's LSTM options to any head.
OPTIONS = dict(hidden_size=8, num_layers=2, bidirectional=True, dropout=0.0)
OWN_OPTIONS = {"transformer": dict(d_model=16, nhead=2, num_layers=1, dropout=0.0)}

HEADS = available_heads()
MODES = pytest.mark.parametrize("per_step", [False, True], ids=["pooled", "per_step"])
DIFF = pytest.mark.parametrize("temporal_diff", [False, True], ids=["plain", "diff"])


def _head(name, *, temporal_diff=False, seed=0):
    torch.manual_seed(seed)
    return build_temporal_head(name, F, temporal_diff=temporal_diff, **{**OPTIONS, **OWN_OPTIONS.get(name, {})})


def _batch(lengths, pad_to=None, seed=1):
    """Padded features (B, T, F) with NaN in the padding: a head that reads padding cannot pass."""
    torch.manual_seed(seed)
    lengths = torch.tensor(lengths)
    features = torch.randn(len(lengths), pad_to or int(lengths.max()), F)
    for i, n in enumerate(lengths.tolist()):
        features[i, n:] = float("nan")
    return features, lengths


def test_the_builtin_heads_are_registered():
    assert {"lstm", "gru", "attention", "transformer", "mean", "max"} <= set(HEADS)


@pytest.mark.parametrize("name", HEADS)
@MODES
@DIFF
def test_padding_never_changes_a_result(name, per_step, temporal_diff):
    head = _head(name, temporal_diff=temporal_diff).eval()
    features, lengths = _batch([2, 5, 1, 3], pad_to=7)  # padded beyond the longest sample too
    with torch.no_grad():
        batched = head(features, lengths, per_step)
        for i, n in enumerate(lengths.tolist()):
            alone = head(features[i:i + 1, :n], lengths[i:i + 1], per_step)
            expected = alone[0]
            got = batched[i, :n] if per_step else batched[i]
            assert torch.isfinite(got).all()
            assert torch.allclose(got, expected, atol=1e-5), (name, i)


@MODES
@pytest.mark.parametrize("options", [dict(readout="last", input_norm=False), dict(readout="last", bidirectional=True)])
def test_padding_never_changes_the_final_state_readout(per_step, options):
    """The readout and input of checkpoints from before those options (still what they load with)."""
    torch.manual_seed(0)
    head = build_temporal_head("lstm", F, **{**OPTIONS, **options}).eval()
    features, lengths = _batch([2, 5, 1, 3], pad_to=7)
    with torch.no_grad():
        batched = head(features, lengths, per_step)
        for i, n in enumerate(lengths.tolist()):
            got = batched[i, :n] if per_step else batched[i]
            assert torch.allclose(got, head(features[i:i + 1, :n], lengths[i:i + 1], per_step)[0], atol=1e-5)


@pytest.mark.parametrize("name", HEADS)
@MODES
@DIFF
def test_output_shapes_follow_output_size(name, per_step, temporal_diff):
    head = _head(name, temporal_diff=temporal_diff).eval()
    features, lengths = _batch([3, 4], pad_to=6)  # per_step keeps T even beyond the longest sample
    with torch.no_grad():
        out = head(features, lengths, per_step)
    expected = (2, 6, head.output_size) if per_step else (2, head.output_size)
    assert out.shape == expected


def test_output_sizes_of_the_contract():
    assert _head("lstm").output_size == 32  # hidden 8, both directions, at the first and the last step
    assert build_temporal_head("lstm", F, **{**OPTIONS, "readout": "last"}).output_size == 16  # the final state
    assert _head("attention").output_size == 16
    assert _head("transformer").output_size == 16  # d_model
    assert _head("mean").output_size == F and _head("max").output_size == F
    assert _head("mean", temporal_diff=True).output_size == 2 * F  # (x_t, x_t - x_{t-1})


@pytest.mark.parametrize("name, order_free", [("mean", True), ("max", True), ("lstm", False)])
def test_order_free_heads_ignore_a_permutation(name, order_free):
    head = _head(name).eval()
    features, lengths = _batch([5])
    shuffled = features[:, torch.tensor([3, 0, 4, 2, 1])]
    with torch.no_grad():
        same = torch.allclose(head(features, lengths), head(shuffled, lengths), atol=1e-6)
    assert same is order_free


@pytest.mark.parametrize("name", ["mean", "max"])
def test_order_free_per_step_is_the_running_pool_ending_in_the_pooled_output(name):
    head = _head(name)
    features, lengths = _batch([4, 2], pad_to=5)
    steps = head(features, lengths, per_step=True)
    pooled = head(features, lengths)
    reduce = (lambda x: x.mean(0)) if name == "mean" else (lambda x: x.amax(0))
    for i, n in enumerate(lengths.tolist()):
        for t in range(n):
            assert torch.allclose(steps[i, t], reduce(features[i, :t + 1]), atol=1e-6)
        assert torch.allclose(steps[i, n - 1], pooled[i], atol=1e-6)


def test_temporal_diff_feeds_the_step_and_its_difference():
    seen = []
    head = build_temporal_head("mean", 2, temporal_diff=True)
    head.head.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    features = torch.tensor([[[1.0, 2.0], [4.0, 0.0], [5.0, 5.0]]])
    head(features, torch.tensor([3]))
    expected = torch.tensor([[[1.0, 2.0, 0.0, 0.0], [4.0, 0.0, 3.0, -2.0], [5.0, 5.0, 1.0, 5.0]]])
    assert torch.equal(seen[0], expected)


@DIFF
def test_attention_weights_sum_to_one_over_real_steps_and_are_zero_on_padding(temporal_diff):
    head = _head("attention", temporal_diff=temporal_diff).eval()
    features, lengths = _batch([2, 5, 3], pad_to=6)
    with torch.no_grad():
        head(features, lengths)
    weights = head.last_attention
    assert weights.shape == (3, 6)
    mask = torch.arange(6)[None, :] < lengths[:, None]
    assert torch.allclose(weights.sum(1), torch.ones(3), atol=1e-6)
    assert (weights[~mask] == 0).all() and (weights[mask] > 0).all()
    head(features, lengths, per_step=True)
    assert head.last_attention is None  # per-step outputs use no attention: no stale weights


def test_registry_refuses_a_duplicate_name():
    with pytest.raises(ValueError, match="already registered"):
        register_head("lstm")(nn.Identity)


def test_unknown_head_lists_the_available_ones():
    with pytest.raises(ConfigError, match=r"unknown temporal head 'rnn9000'.*lstm.*transformer"):
        build_temporal_head("rnn9000", F)


def test_unknown_option_names_the_option_and_the_head_but_common_ones_are_dropped():
    with pytest.raises(ConfigError, match=r"'lstm' has no option 'nhead'"):
        build_temporal_head("lstm", F, nhead=2)
    with pytest.raises(ConfigError, match=r"'mean' has no option 'd_model'"):
        build_temporal_head("mean", F, d_model=8)
    assert build_temporal_head("mean", F, hidden_size=8, bidirectional=True).output_size == F
    with pytest.raises(ConfigError, match="multiple of nhead"):
        build_temporal_head("transformer", F, d_model=10, nhead=4)


@pytest.mark.parametrize("name", HEADS)
def test_a_few_training_steps_reach_every_parameter_and_lower_the_loss(name):
    head = _head(name, temporal_diff=name == "gru")  # one head trains through the difference wrapper
    task = nn.Linear(head.output_size, 2)
    torch.manual_seed(2)
    features, lengths = _batch([3, 5, 2, 4, 5, 1], pad_to=5)
    features = torch.nan_to_num(features, nan=0.0).requires_grad_(True)
    targets = (features.detach()[:, 0, 0] > 0).long()  # learnable from the first image
    optimizer = torch.optim.Adam([*head.parameters(), *task.parameters()], lr=0.02)
    losses = []
    for step in range(15):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(task(head(features, lengths)), targets)
        loss.backward()
        if step == 0:
            assert features.grad.abs().sum() > 0
            for pname, p in head.named_parameters():
                assert p.grad is not None and p.grad.abs().sum() > 0, pname
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_grid2_pooling_concatenates_four_average_cells():
    torch.manual_seed(0)
    avg = build_backbone("tiny_cnn", weights="none", pool="avg").eval()
    torch.manual_seed(0)
    grid = build_backbone("tiny_cnn", weights="none", pool="grid2").eval()
    assert grid.num_features == 4 * avg.num_features
    images = torch.randn(3, 3, 32, 32)  # an 8x8 feature map: four 4x4 cells
    with torch.no_grad():
        cells = grid(images)
        assert cells.shape == (3, 4 * avg.num_features)
        assert torch.allclose(cells.view(3, 4, -1).mean(1), avg(images), atol=1e-5)  # mean of cells = global mean
        top_left = grid.trunk(images)[:, :, :4, :4].mean(dim=(-2, -1))
        assert torch.allclose(cells[:, : avg.num_features], top_left, atol=1e-5)


def test_bad_pool_lists_all_three():
    with pytest.raises(ConfigError, match="avg, max or grid2"):
        build_backbone("tiny_cnn", weights="none", pool="mean")
