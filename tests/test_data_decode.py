"""Reduced decoding: large JPEGs decode at libjpeg's 1/2..1/8 scales and video frames are scaled by FFmpeg,
never below what the resize needs; the result stays close to full decoding, EXIF orientation still
applies, the mode is part of the cache key, and --exact-decode restores full decoding."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED_WEIGHTS
from seqvision.data.images import load_image
from seqvision.data.transforms import ClipTransform, Preprocessing, resolve_preprocessing
from seqvision.data.video import read_frames
from seqvision.features.cache import CacheKey

OPENCV_PHOTO = Path("/usr/share/doc/opencv-doc/examples/data/aloeL.jpg")  # a real 1282x1110 photo
OPENCV_VIDEO = OPENCV_PHOTO.with_name("vtest.avi")  # real footage, 768x576, 795 frames


def _photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth scene with some texture (no pure noise: a photo's energy sits at low frequencies)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin(6 * x + 2 * y), np.cos(5 * y - 3 * x), np.sin(9 * x * y)], axis=-1)
    noise = rng.normal(0, 0.08, (height // 8 + 1, width // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:height, :width]
    return np.clip((base * 0.4 + 0.5 + noise) * 255, 0, 255).astype(np.uint8)


def _jpeg(path: Path, array: np.ndarray, **save) -> Path:
    Image.fromarray(array).save(path, quality=92, **save)
    return path


def test_a_large_jpeg_decodes_reduced_but_never_below_what_the_resize_needs(tmp_path):
    path = _jpeg(tmp_path / "big.jpg", _photo(2400, 1600))
    full = load_image(path)
    reduced = load_image(path, decode_size=256)
    assert full.shape == (3, 1600, 2400) and reduced.shape == (3, 400, 600)  # 1/4: the smallest >= 256
    assert load_image(path, decode_size=900).shape == (3, 1600, 2400)  # under 2x: no reduction
    prep = Preprocessing(224, 256)
    exact = ClipTransform(Preprocessing(224, 256, decode="exact"))([full])
    fast = ClipTransform(prep)([reduced])
    assert (exact - fast).abs().mean() < 0.02  # normalized units: ~0.1 % of the range per pixel


def test_reduced_decoding_keeps_the_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _jpeg(tmp_path / "rotated.jpg", _photo(1600, 1200), exif=exif.tobytes())
    assert load_image(path).shape == (3, 1600, 1200)
    assert load_image(path, decode_size=256).shape == (3, 400, 300)


def test_video_frames_are_scaled_by_the_decoder(tmp_path):
    import av

    path = tmp_path / "hd.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.roll(_photo(1280, 720), 16 * i, axis=1), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    full, _ = read_frames(path, [0.2], 10.0)
    small, _ = read_frames(path, [0.2], 10.0, decode_size=256)
    assert full[0].shape == (3, 720, 1280) and small[0].shape == (3, 256, 455)
    exact = ClipTransform(Preprocessing(224, 256, decode="exact"))(full)
    fast = ClipTransform(Preprocessing(224, 256))(small)
    assert (exact - fast).abs().mean() < 0.05  # normalized units: about 2 grey levels of 255 per pixel


def test_the_decode_mode_is_in_the_cache_key_and_the_checkpoint():
    reduced, exact = Preprocessing(224, 256), Preprocessing(224, 256, decode="exact")
    assert reduced.to_dict()["decode"] == "reduced" and "decode" not in exact.to_dict()  # keys made before: exact
    assert Preprocessing.from_dict(reduced.to_dict()) == reduced and Preprocessing.from_dict(exact.to_dict()) == exact
    encoder = torch.nn.Conv2d(3, 4, 1)
    encoder.name, encoder.pool = "probe", "avg"
    assert CacheKey.for_encoder(encoder, reduced).digest != CacheKey.for_encoder(encoder, exact).digest
    assert resolve_preprocessing(reduced, exact_decode=True).decode == "exact"
    assert ClipTransform(exact).decode_size is None and ClipTransform(reduced).decode_size == 256
    assert ClipTransform(reduced, train=True).decode_size == 512  # the random crop reads more pixels


_NO_WEIGHTS = "the offline ImageNet MobileNetV2 weights (../shared/weights) are not here"
_HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # the offline MobileNetV2's mean and std


def _real_mobilenet():
    from seqvision.models.backbones import build_backbone

    return build_backbone("mobilenet_v2", weights=str(SHARED_WEIGHTS)).eval()


@pytest.mark.skipif(not SHARED_WEIGHTS.is_file(), reason=_NO_WEIGHTS)
@pytest.mark.skipif(not OPENCV_PHOTO.is_file(), reason=f"no real photo to check: {OPENCV_PHOTO} (Debian: apt-get install opencv-doc)")
def test_real_imagenet_features_of_a_reduced_decode_of_a_real_photo_stay_within_a_cosine_of_0_99(tmp_path):
    # a real photo, upscaled to 12 megapixels by Pillow (a phone camera's size)
    photo = np.asarray(Image.open(OPENCV_PHOTO).convert("RGB").resize((4000, 3000), Image.BICUBIC))
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", quality=90)
    path = tmp_path / "12mp.jpg"
    path.write_bytes(buffer.getvalue())
    encoder = _real_mobilenet()
    exact = ClipTransform(Preprocessing(224, 256, *_HALF, decode="exact"))([load_image(path)])
    fast = ClipTransform(Preprocessing(224, 256, *_HALF))([load_image(path, decode_size=256)])
    with torch.no_grad():
        cosine = torch.nn.functional.cosine_similarity(encoder(exact), encoder(fast)).item()
    assert cosine >= 0.99


@pytest.mark.skipif(not SHARED_WEIGHTS.is_file(), reason=_NO_WEIGHTS)
@pytest.mark.skipif(not OPENCV_VIDEO.is_file(), reason=f"no real footage to check: {OPENCV_VIDEO} (Debian: apt-get install opencv-doc)")
def test_real_imagenet_features_of_reduced_decodes_of_real_footage_stay_within_a_cosine_of_0_99():
    from seqvision.data.video import probe_video

    info = probe_video(OPENCV_VIDEO)
    times = [info.frame_time(i) for i in range(0, 700, 100)]
    encoder = _real_mobilenet()
    exact = ClipTransform(Preprocessing(224, 256, *_HALF, decode="exact"))(read_frames(OPENCV_VIDEO, times, info.fps)[0])
    fast = ClipTransform(Preprocessing(224, 256, *_HALF))(read_frames(OPENCV_VIDEO, times, info.fps, decode_size=256)[0])
    assert len(times) == 7 and exact.shape == fast.shape == (7, 3, 224, 224)
    with torch.no_grad():
        assert torch.nn.functional.cosine_similarity(encoder(exact), encoder(fast)).min() >= 0.99
