import torch

from seqvision.data.sampling import shuffled, uniform_indices
from seqvision.data.transforms import ClipTransform, Preprocessing, resolve_preprocessing


def test_eval_transform_shape_and_normalization():
    prep = Preprocessing(8, 10, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    frames = [torch.full((3, 20, 30), 255, dtype=torch.uint8), torch.zeros((3, 20, 30), dtype=torch.uint8)]
    clip = ClipTransform(prep)(frames)
    assert clip.shape == (2, 3, 8, 8)
    assert torch.allclose(clip[0], torch.ones_like(clip[0])) and torch.allclose(clip[1], -torch.ones_like(clip[1]))


def test_frames_of_other_sizes_are_resized_to_the_first():
    prep = Preprocessing(8, 8)
    frames = [torch.zeros((3, 16, 16), dtype=torch.uint8), torch.zeros((3, 40, 20), dtype=torch.uint8)]
    assert ClipTransform(prep, train=True)(frames).shape == (2, 3, 8, 8)


def test_training_augmentation_draws_one_set_of_parameters_per_sample():
    torch.manual_seed(0)
    prep = Preprocessing(12, 12)
    base = torch.randint(0, 255, (3, 24, 24), dtype=torch.uint8)
    transform = ClipTransform(prep, train=True)
    outputs = [transform([base] * 5) for _ in range(4)]
    for clip in outputs:  # identical frames stay identical: crop, flip and jitter shared by all frames
        assert all(torch.equal(clip[0], clip[t]) for t in range(1, 5))
    assert not all(torch.equal(outputs[0], o) for o in outputs[1:])  # and draws differ between samples


def test_resolve_preprocessing_keeps_the_resize_ratio():
    base = Preprocessing(224, 256)
    assert resolve_preprocessing(base).resize_size == 256
    small = resolve_preprocessing(base, image_size=112, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    assert (small.image_size, small.resize_size, small.mean) == (112, 128, (0.5, 0.5, 0.5))


def test_uniform_sampling_spreads_over_the_sample():
    assert uniform_indices(5, None) == [0, 1, 2, 3, 4]
    assert uniform_indices(3, 8) == [0, 1, 2]
    assert uniform_indices(10, 4) == [0, 3, 6, 9]
    assert uniform_indices(9, 1) == [4]
    assert sorted(shuffled([0, 1, 2, 3], seed=1)) == [0, 1, 2, 3]
    assert shuffled(list(range(10)), seed=1) == shuffled(list(range(10)), seed=1)


def _left_bright() -> torch.Tensor:
    image = torch.zeros((3, 24, 24), dtype=torch.uint8)
    image[:, :, :12] = 255  # left half white, right half black: a mirror puts the white on the right
    return image


def _mirrored(clip: torch.Tensor) -> bool:
    return bool(clip[0, :, :, 0].mean() < clip[0, :, :, -1].mean())


def test_default_augmentation_never_mirrors_so_direction_survives():
    from seqvision.config import DataConfig

    torch.manual_seed(0)
    default = ClipTransform(Preprocessing(12, 12), train=True, hflip=DataConfig().hflip)
    assert not any(_mirrored(default([_left_bright()] * 3)) for _ in range(60))
    flipping = ClipTransform(Preprocessing(12, 12), train=True, hflip=True)  # only when asked for
    assert any(_mirrored(flipping([_left_bright()] * 3)) for _ in range(60))
