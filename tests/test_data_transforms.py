import pytest
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


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_evaluation_clip_equals_torchvisions_transforms_bit_for_bit_in_either_memory_layout(interpolation):
    """The evaluation path reorders memory for speed (channels_last resize, contiguous normalize); the
    floats must stay exactly those of torchvision's resize, crop, to_dtype and normalize, so caches and
    checkpoints made before stay valid."""
    from torchvision.transforms.v2 import functional as F

    prep = Preprocessing(24, 28, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), interpolation=interpolation)
    generator = torch.Generator().manual_seed(0)
    for height, width in [(40, 53), (28, 28), (17, 90), (12, 10)]:  # down, equal, odd and upsampled
        hwc = [torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8) for _ in range(3)]
        decoded = [f.permute(2, 0, 1) for f in hwc]  # the decoders' layout (channels_last memory)
        reference = F.center_crop(F.resize(torch.stack([f.contiguous() for f in decoded]), [28], interpolation=prep.interpolation_mode, antialias=True), [24, 24])
        reference = F.normalize(F.to_dtype(reference, torch.float32, scale=True), mean=list(prep.mean), std=list(prep.std))
        for frames in (decoded, [f.contiguous() for f in decoded], decoded[:1]):
            clip = ClipTransform(prep)(frames)
            assert clip.is_contiguous() and torch.equal(clip, reference[: len(frames)])
            for layout in (torch.contiguous_format, torch.channels_last):  # written into a batch's rows
                batch = torch.full((5, 3, 24, 24), float("nan")).contiguous(memory_format=layout)
                rows = batch[1 : 1 + len(frames)]
                assert ClipTransform(prep)(frames, out=rows) is rows
                assert torch.equal(rows, reference[: len(frames)]) and batch[0].isnan().all() and batch[4].isnan().all()


def test_a_clip_written_into_a_batch_must_fit_it():
    prep = Preprocessing(8, 8)
    frames = [torch.zeros((3, 10, 10), dtype=torch.uint8)] * 2
    with pytest.raises(ValueError, match="out must be float32 of shape"):
        ClipTransform(prep)(frames, out=torch.empty(3, 3, 8, 8))  # one row too many: no silent broadcast
    with pytest.raises(ValueError, match="out must be float32"):
        ClipTransform(prep)(frames, out=torch.empty(2, 3, 8, 8, dtype=torch.bfloat16))
