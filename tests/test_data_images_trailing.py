"""JPEGs with data after the image (a phone's Motion Photo: an MP4 appended after the end-of-image
marker) decode as the image they hold; a JPEG that really ends early is still refused."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from seqvision.data.images import load_image
from seqvision.errors import BadFileError


def _jpeg(size: int, **options) -> bytes:
    """A real JPEG of a smooth colour pattern (with some texture, so its scan is not trivial)."""
    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([x * 255 // size, y * 255 // size, (x * y) % 256], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


def _motion_photo_video(n: int = 64 * 1024) -> bytes:
    """What a Motion Photo appends: an MP4 (its ftyp box, then media bytes); no end-of-image marker among
    its last bytes, so only the image's own marker can end the JPEG."""
    media = np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes().replace(b"\xff\xd9", b"\xff\xd8")
    return b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00isommp42" + media


@pytest.mark.parametrize("decode_size", [None, 16], ids=["full (libjpeg kernel)", "reduced (Pillow draft)"])
def test_a_motion_photo_decodes_as_its_jpeg(tmp_path, decode_size):
    # an end-of-image marker inside a comment segment too: the image's end is found by its structure
    jpeg = _jpeg(64, comment=b"a thumbnail's end \xff\xd9 inside a segment")
    (tmp_path / "plain.jpg").write_bytes(jpeg)
    (tmp_path / "motion.jpg").write_bytes(jpeg + _motion_photo_video())
    expected = load_image(tmp_path / "plain.jpg", decode_size=decode_size)
    assert torch.equal(load_image(tmp_path / "motion.jpg", decode_size=decode_size), expected)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_a_truncated_jpeg_is_still_refused(tmp_path, keep):
    jpeg = _jpeg(64)
    path = tmp_path / "cut.jpg"
    path.write_bytes(jpeg[: int(len(jpeg) * keep)])
    with pytest.raises(BadFileError, match="cut.jpg: truncated JPEG"):
        load_image(path)


def test_a_jpeg_cut_short_inside_its_headers_is_refused(tmp_path):
    path = tmp_path / "head.jpg"
    path.write_bytes(_jpeg(64)[:40])
    with pytest.raises(BadFileError, match="head.jpg: truncated JPEG"):
        load_image(path)
