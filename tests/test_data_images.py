import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from seqvision.data.images import load_image
from seqvision.errors import BadFileError


@pytest.mark.parametrize("ext", ["jpg", "png", "bmp", "webp", "tiff"])
def test_formats_decode_to_rgb_uint8(tmp_path, ext):
    array = np.full((10, 12, 3), (200, 100, 50), dtype=np.uint8)
    path = tmp_path / f"img.{ext}"
    Image.fromarray(array).save(path, **({"quality": 95} if ext == "jpg" else {}))
    image = load_image(path)
    assert image.dtype == torch.uint8 and image.shape == (3, 10, 12)
    assert torch.allclose(image[:, 5, 5].float(), torch.tensor([200.0, 100.0, 50.0]), atol=6)


def test_modes_become_rgb(tmp_path):
    Image.new("L", (4, 4), 128).save(tmp_path / "gray.png")
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(tmp_path / "transparent.png")
    Image.new("RGBA", (4, 4), (0, 255, 0, 255)).save(tmp_path / "opaque.png")
    Image.new("P", (4, 4), 3).save(tmp_path / "palette.png")
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    assert load_image(tmp_path / "gray.png")[:, 0, 0].tolist() == [128, 128, 128]
    assert load_image(tmp_path / "transparent.png")[:, 0, 0].tolist() == [0, 0, 0]
    assert load_image(tmp_path / "opaque.png")[:, 0, 0].tolist() == [0, 255, 0]
    assert load_image(tmp_path / "palette.png").shape == (3, 4, 4)
    deep = load_image(tmp_path / "deep.png")
    assert deep.dtype == torch.uint8 and deep[:, 0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_exif_orientation_is_honoured(tmp_path, ext):
    img = Image.new("RGB", (20, 10), (10, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / f"rot.{ext}", exif=exif)
    assert load_image(tmp_path / f"rot.{ext}").shape == (3, 20, 10)


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (90, 90, 90)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.jpg", b"", "empty file"),
        ("text.jpg", b"this is not an image at all", "not a readable image"),
        ("cut.jpg", None, "truncated"),
        ("cut.png", None, "corrupt or truncated"),
    ],
)
def test_bad_files_name_the_file(tmp_path, name, content, reason):
    path = tmp_path / name
    if content is None and name.endswith(".jpg"):
        content = _jpeg_bytes()[:200]
    if content is None:
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
        content = buffer.getvalue()[:300]
    path.write_bytes(content)
    with pytest.raises(BadFileError, match=reason) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(BadFileError, match="does not exist"):
        load_image(tmp_path / "gone.png")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels with almost no data behind it."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    """A header claiming 400 MP: past Pillow's own error limit too (whichever check fires, nothing decodes)."""
    (tmp_path / "bomb.png").write_bytes(_png_header_only(20000, 20000))
    with pytest.raises(BadFileError, match="pixel limit"):
        load_image(tmp_path / "bomb.png")


def _png_blank(width: int, height: int) -> bytes:
    """A complete, valid all-black 1-bit PNG of ``width x height`` (a few hundred KB for 144 MP: 1 bit per
    pixel of zeros compresses ~1000:1), which decodes to ``3 * width * height`` bytes of RGB."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    packer = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte + the packed row
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# Between our limit and the size where Pillow itself refuses (2 x Image.MAX_IMAGE_PIXELS: Pillow only warns
# below it, and that warning is silenced), so only seqvision's MAX_PIXELS stands between it and a decode.
_BETWEEN_THE_LIMITS = (12_000, 12_000)
_BOMB_CHILD = """
import json, resource, sys
from seqvision.data.images import load_image
from seqvision.errors import BadFileError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_image(sys.argv[1])
    error = None
except BadFileError as exc:
    error = str(exc)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"error": error, "grown_kib": grown}))
"""


def test_an_image_between_our_pixel_limit_and_pillows_is_refused_before_decoding(tmp_path):
    """A fresh process (its peak memory is its own, not an earlier test's) opens a real, decodable 144 MP
    PNG: refused by its header, and its peak memory does not grow by the ~430 MB of the RGB decode."""
    import json
    import subprocess
    import sys

    from seqvision.data import images

    width, height = _BETWEEN_THE_LIMITS
    assert images.MAX_PIXELS < width * height < 2 * Image.MAX_IMAGE_PIXELS
    (tmp_path / "bomb.png").write_bytes(_png_blank(width, height))
    res = subprocess.run([sys.executable, "-c", _BOMB_CHILD, str(tmp_path / "bomb.png")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["error"] is not None and "12000x12000 pixels" in report["error"], report
    assert "bomb.png" in report["error"]
    assert report["grown_kib"] < 100_000, report  # KiB: nothing near the 432 MB of the decoded image


def test_an_image_between_the_limits_reaches_no_decoder(tmp_path, monkeypatch):
    """The same image in this process: refused by its header, before Pillow loads or converts a pixel."""
    width, height = _BETWEEN_THE_LIMITS
    (tmp_path / "bomb.png").write_bytes(_png_blank(width, height))

    def no_decoding(self):
        raise AssertionError("a decoder was reached")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(Image.Image, "convert", no_decoding)
    with pytest.raises(BadFileError, match="12000x12000 pixels is larger than the 100,000,000-pixel limit"):
        load_image(tmp_path / "bomb.png")


def test_large_jpeg_header_is_checked_before_decoding(tmp_path, monkeypatch):
    from seqvision.data import images

    Image.new("RGB", (300, 200), (1, 2, 3)).save(tmp_path / "big.jpg")
    monkeypatch.setattr(images, "MAX_PIXELS", 300 * 200 - 1)
    with pytest.raises(BadFileError, match="300x200 pixels"):
        load_image(tmp_path / "big.jpg")


def test_one_pixel_image_is_fine(tmp_path):
    Image.new("RGB", (1, 1), (9, 9, 9)).save(tmp_path / "dot.png")
    assert load_image(tmp_path / "dot.png").shape == (3, 1, 1)


def test_decoding_in_threads_leaves_the_warnings_machinery_as_it_was(tmp_path):
    """Decoding threads (extraction) each silence Pillow's bomb warning while reading a header; they must
    not leak a recorder into the process or lose the filters (catch_warnings is process-wide state)."""
    import threading
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    paths = []
    for i in range(40):
        path = tmp_path / f"{i}.{'jpg' if i % 3 else 'png'}"
        Image.fromarray(np.full((64, 64, 3), i * 5, np.uint8)).save(path)
        paths.append(path)
    load_image(paths[0]), load_image(paths[1])  # first decodes import modules that add filters of their own
    before_show, before_filters = warnings.showwarning, list(warnings.filters)
    barrier = threading.Barrier(2)

    def decode(part):
        barrier.wait()  # both threads decode at the same time
        return [load_image(p) for p in part for _ in range(5)]

    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(decode, [paths[::2], paths[1::2]]))
    assert sum(len(d) for d in done) == 200
    assert warnings.showwarning is before_show and warnings.filters == before_filters
    with pytest.warns(UserWarning, match="still reported"):
        warnings.warn("still reported", UserWarning, stacklevel=1)


def _noisy_jpeg(path, size=(48, 36), orientation=None):
    pixels = np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, quality=90, exif=exif)


@pytest.mark.parametrize("orientation", [None, 6, 3])
def test_the_jpeg_kernel_and_pillow_give_the_same_pixels(tmp_path, monkeypatch, orientation):
    """torchvision's libjpeg kernel is used for speed, Pillow where that kernel is gone (torchvision's
    decoders are deprecated) or fails: a cache must not depend on which one decoded an image."""
    from seqvision.data import images

    path = tmp_path / "noise.jpg"
    _noisy_jpeg(path, orientation=orientation)
    assert images._JPEG_KERNEL is not None  # this torchvision has the kernel: the fast path is the one tested
    fast = load_image(path)
    monkeypatch.setattr(images, "_JPEG_KERNEL", None)
    assert torch.equal(load_image(path), fast)
    assert fast.shape == ((3, 48, 36) if orientation == 6 else (3, 36, 48))


def test_a_jpeg_header_claiming_a_huge_image_is_refused_before_decoding(tmp_path, monkeypatch):
    """Past twice Pillow's own limit its header parse raises: that must refuse the file, not hand it
    to libjpeg, which would allocate the 400-megapixel frame first."""
    import struct

    from seqvision.data import images

    def no_decoding(*args, **kwargs):
        raise AssertionError("the file reached a decoder")

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (5, 5, 5)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")  # baseline frame header: length(2) precision(1) height(2) width(2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", 20000, 20000)
    (tmp_path / "bomb.jpg").write_bytes(bytes(data))
    monkeypatch.setattr(images, "_JPEG_KERNEL", no_decoding)
    monkeypatch.setattr(images, "_decode_pillow", no_decoding)
    with pytest.raises(BadFileError, match="pixel limit") as info:
        load_image(tmp_path / "bomb.jpg")
    assert str(tmp_path / "bomb.jpg") in str(info.value)


def _refusals(path) -> tuple[BadFileError, BadFileError]:
    """What read_header and load_image raise for ``path``."""
    from seqvision.data.images import read_header

    with pytest.raises(BadFileError) as header:
        read_header(path)
    with pytest.raises(BadFileError) as loaded:
        load_image(path)
    return header.value, loaded.value


def test_read_header_gives_the_size_and_refuses_what_load_image_refuses_unread(tmp_path):
    """The header path of ``seqvision inspect``: the format from the content (not the name) and the size,
    and, for a file the loader refuses before decoding, the very error the loader raises."""
    from seqvision.data.images import read_header

    Image.new("RGB", (24, 16), (1, 2, 3)).save(tmp_path / "ok.png")
    (tmp_path / "named.jpg").write_bytes((tmp_path / "ok.png").read_bytes())
    assert read_header(tmp_path / "ok.png") == read_header(tmp_path / "named.jpg") == ("PNG", 24, 16)
    (tmp_path / "huge.png").write_bytes(_png_header_only(20000, 10000))  # past Pillow's own error limit
    (tmp_path / "between.png").write_bytes(_png_header_only(12000, 9000))  # ours only: Pillow just warns
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    for name in ("huge.png", "between.png", "empty.png", "text.png", "gone.png"):
        header, loaded = _refusals(tmp_path / name)
        assert header.path == loaded.path == tmp_path / name and header.reason == loaded.reason, name
    assert "12000x9000 pixels is larger than the 100,000,000-pixel limit" in _refusals(tmp_path / "between.png")[0].reason


def test_read_header_reads_a_packs_member(tmp_path):
    """A member of a pack's shard is read from its byte range, and refused past the limit like a file."""
    from seqvision.data.images import read_header
    from seqvision.data.pack_writer import pack
    from seqvision.data.packs import read_pack

    sample = tmp_path / "data" / "a" / "s0"
    sample.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (20, 12), (i, i, i)).save(sample / f"f{i}.png")
    (sample / "f2.png").write_bytes(_png_header_only(20000, 10000))
    pack(tmp_path / "data", tmp_path / "pack")
    frames = [f.path for f in read_pack(tmp_path / "pack")[0].frames]
    assert [read_header(p) for p in frames[:2]] == [("PNG", 20, 12)] * 2
    header, loaded = _refusals(frames[2])
    assert header.reason == loaded.reason and "100,000,000-pixel limit" in header.reason
