"""Decode one image file to an RGB ``uint8`` tensor ``(3, H, W)``.

JPEG takes torchvision's libjpeg kernel (fast, EXIF orientation applied); everything else goes through
Pillow, which knows every mode: grayscale, RGBA, palette and 16-bit images all become 8-bit RGB.

The tensor comes in the decoders' own pixel-interleaved layout (``(3, H, W)`` viewing ``(H, W, 3)``
memory, i.e. channels_last, or its transpose for an EXIF-rotated JPEG), not made contiguous: torch's
uint8 antialiased resize runs about 2x faster on it (``benchmarks/decode_threads.py``), and the copy is
saved. Decoding threads run in parallel: nothing here holds a lock while decoding.

With ``decode_size`` (the shorter side the resize that follows needs), a JPEG at least twice that size
is decoded by libjpeg at 1/2, 1/4 or 1/8 scale (its DCT scaling, through Pillow's ``draft``), never
below ``decode_size``: most of the decoding of a phone photo is pixels the resize would throw away.
"""

from __future__ import annotations

import io
import math
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from seqvision.data.packs import member_of
from seqvision.data.remote import read_bytes, shown, url_of
from seqvision.errors import BadFileError

# Decompression-bomb guard: refuse images of more than this many pixels (10k x 10k, 300 MB as RGB)
# before decoding them, so memory stays bounded whatever a file's header claims.
MAX_PIXELS = 100_000_000
# Pillow's own bomb check warns while it reads a header; catch_warnings swaps process-wide state, so
# two threads inside it at once would leave a recorder installed for good. It guards the header parse
# only (microseconds), never a decode.
_WARNINGS_LOCK = threading.Lock()


def _torchvision_jpeg_kernel():
    """torchvision's libjpeg-turbo decoding op and its RGB mode, or Nones where this torchvision has none.

    Called directly, not through ``torchvision.io.decode_jpeg``: that wrapper only adds the deprecation
    warning of torchvision 0.29's decoders (superseded by TorchCodec), which would have to be caught
    around every decode. Pillow decodes the same pixels (tested), so a torchvision without the op
    only costs speed."""
    try:
        from torchvision.io import ImageReadMode  # also loads the extension that registers torch.ops.image

        rgb = ImageReadMode.RGB.value
        kernel = torch.ops.image.decode_jpeg
    except (ImportError, AttributeError, RuntimeError):
        return None, None
    return kernel, rgb


_JPEG_KERNEL, _RGB = _torchvision_jpeg_kernel()


def load_image(path: str | Path, *, decode_size: int | None = None) -> torch.Tensor:
    """Read ``path`` as RGB ``uint8`` ``(3, H, W)``; raise :class:`BadFileError` naming the file.
    ``decode_size``: a large JPEG may be decoded reduced, its shorter side no smaller than this."""
    path = Path(path)
    member = member_of(path)  # first: a member of a pack given by URL is a URL too, read from its shard
    if member is None and url_of(path) is not None:  # a URL: fetched whole through fsspec (a BadFileError naming it if it cannot be)
        data, named = read_bytes(path), shown(path)  # messages name the URL, unfolded and redacted
        if not data:
            raise BadFileError(named, "empty object (0 bytes)")
        return _decode_jpeg(named, data, decode_size) if data[:3] == b"\xff\xd8\xff" else _decode_pillow(named, data)
    try:
        data = member.read() if member is not None else path.read_bytes()
    except FileNotFoundError:
        raise BadFileError(path, "file does not exist") from None
    except OSError as exc:
        raise BadFileError(path, f"cannot be read ({exc.strerror or exc})") from None
    named = Path(shown(path))  # a packed member by URL: named unfolded and redacted
    if not data:
        raise BadFileError(named, "empty file (0 bytes)")
    if data[:3] == b"\xff\xd8\xff":
        return _decode_jpeg(named, data, decode_size)
    return _decode_pillow(named, data)


def _decode_jpeg(path: Path, data: bytes, decode_size: int | None = None) -> torch.Tensor:
    # libjpeg treats a missing end marker as a warning and pads with grey: a truncated file would
    # silently train on half an image, so check for the end-of-image marker ourselves. It ends almost
    # every file; when it does not, the file may still be whole with data after the image (a phone's
    # "Motion Photo" appends an MP4): the markers are walked to the image's own end, and only that is decoded.
    if b"\xff\xd9" not in data[-4096:]:
        end = _jpeg_end(data)
        if end is None:
            raise BadFileError(path, "truncated JPEG (no end-of-image marker); re-export or remove the file")
        data = data[:end]
    try:
        with _open_checked(path, io.BytesIO(data)) as header:  # the size, before anything is decoded
            reduce = decode_size is not None and min(header.size) >= 2 * decode_size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        reduce = False  # let the decoders below report what is wrong with it
    if reduce or _JPEG_KERNEL is None:
        return _decode_pillow(path, data, decode_size=decode_size if reduce else None)
    try:
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        image = _JPEG_KERNEL(raw, _RGB, True)  # (3, H, W) over (H, W, 3) memory; EXIF orientation applied
    except RuntimeError:
        return _decode_pillow(path, data)  # CMYK/odd JPEGs: let Pillow try (it raises a clear error if not)
    _check_size(path, image.shape[1], image.shape[2])
    return image


def _jpeg_end(data: bytes) -> int | None:
    """The offset just past a JPEG's end-of-image marker, found by walking its segments and scans (so an
    EOI inside a segment, e.g. an EXIF thumbnail's, or in data after the image is not taken for it); None
    when the data ends first (a truncated file) or is not laid out as a JPEG."""
    pos, size = 2, len(data)  # after the start-of-image marker
    while pos + 1 < size:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
        elif marker == 0xD9:  # end of image
            return pos + 2
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
        elif pos + 3 >= size or (length := int.from_bytes(data[pos + 2:pos + 4], "big")) < 2:
            return None
        else:
            pos += 2 + length
            if marker == 0xDA:  # start of scan: entropy-coded data until a marker other than a restart
                pos = _scan_end(data, pos)
    return None


def _scan_end(data: bytes, pos: int) -> int:
    """Where the entropy-coded data that starts at ``pos`` ends: at the first 0xFF that begins a marker
    (0xFF 0x00 is a stuffed 0xFF byte, 0xFF 0xD0-0xD7 a restart marker); ``len(data)`` when none does."""
    while (pos := data.find(b"\xff", pos)) != -1 and pos + 1 < len(data):
        following = data[pos + 1]
        if following != 0x00 and not 0xD0 <= following <= 0xD7 and following != 0xFF:
            return pos
        pos += 1 if following == 0xFF else 2
    return len(data)


_TOO_LARGE = f"larger than the {MAX_PIXELS:,}-pixel limit (a decompression bomb?)"


def read_header(path: str | Path) -> tuple[str, int, int]:
    """``(format, width, height)`` of an image file, or of a pack's member, from its header alone (no
    pixel is decoded, only the first bytes are read). Refuses what :func:`load_image` refuses before
    decoding, with the same :class:`BadFileError`: a missing, empty or unreadable file, one that is not
    an image, one larger than :data:`MAX_PIXELS` (``seqvision inspect`` reads sizes through this)."""
    path = Path(path)
    member = member_of(path)  # first: a member of a pack given by URL is a URL too, read from its shard
    if member is None and url_of(path) is not None:  # a store's GET is one request, so the (small) image is fetched whole
        named = shown(path)  # messages name the URL, unfolded and redacted
        return _header(Path(named), named, io.BufferedReader(io.BytesIO(read_bytes(path))))
    try:
        source = member.open() if member is not None else open(path, "rb")  # a member: its byte range only
    except FileNotFoundError:
        raise BadFileError(path, "file does not exist") from None
    except OSError as exc:
        raise BadFileError(path, f"cannot be read ({exc.strerror or exc})") from None
    return _header(path, Path(shown(path)), source)


def _header(path: Path, named: str | Path, source: io.BufferedReader) -> tuple[str, int, int]:
    """:func:`read_header` of an opened ``source`` (closed here); errors name ``named``."""
    with source:
        if not source.peek(1):
            raise BadFileError(named, "empty file (0 bytes)")
        try:
            with _open_checked(named, source) as img:
                return img.format or path.suffix.lstrip(".").upper(), img.width, img.height
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise _not_an_image(named, exc) from None


def _open_checked(path: Path, source: io.IOBase) -> Image.Image:
    """Pillow's lazy image over ``source`` (only the header is read), refused with :class:`BadFileError`
    past :data:`MAX_PIXELS`: the one size check of the loader and of :func:`read_header`. Pillow's own
    bomb check warns (silenced: ours decides) or, past twice its limit, raises (turned into ours).
    Other errors of the header parse are Pillow's, for the caller to judge."""
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)
    except Image.DecompressionBombError:
        raise BadFileError(path, _TOO_LARGE) from None
    try:
        _check_size(path, img.height, img.width)
    except BadFileError:
        img.close()
        raise
    return img


def _not_an_image(path: Path, exc: Exception) -> BadFileError:
    """Pillow's error for a file it cannot parse or decode, as ours naming the file."""
    if isinstance(exc, UnidentifiedImageError):
        return BadFileError(path, f"not a readable image ({type(exc).__name__})")
    return BadFileError(path, f"corrupt or truncated image ({exc})")


def _check_size(path: Path, height: int, width: int) -> None:
    if height * width > MAX_PIXELS:
        raise BadFileError(path, f"{width}x{height} pixels is larger than the {MAX_PIXELS:,}-pixel limit (a decompression bomb?)")


def _decode_pillow(path: Path, data: bytes, *, decode_size: int | None = None) -> torch.Tensor:
    """``data`` (the bytes of ``path``, already read) decoded by Pillow; errors name ``path``.
    ``decode_size``: a JPEG is decoded at the smallest DCT scale whose shorter side is at least this."""
    try:
        with _open_checked(path, io.BytesIO(data)) as img:
            if decode_size is not None and img.format == "JPEG":
                scale = decode_size / min(img.size)  # draft keeps both sides >= the size asked for
                img.draft("RGB", (math.ceil(img.width * scale), math.ceil(img.height * scale)))
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # in place: no copy of an upright image
            # (H, W, 3), writable (a view of Pillow's bytes is not); converted only if not RGB already
            array = np.array(img if img.mode == "RGB" else _to_rgb(img), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise _not_an_image(path, exc) from None
    return torch.from_numpy(array).permute(2, 0, 1)  # channels_last, as the JPEG kernel gives


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. 16-bit and 32-bit integer images are scaled to their full range."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if img.mode == "F":
        array = np.asarray(img, dtype=np.float64)
        lo, hi = float(array.min(initial=0)), float(array.max(initial=1))
        array = ((array - lo) / max(hi - lo, 1e-12) * 255.0 + 0.5).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparent pixels on black (what most viewers' "no background" means for a CNN).
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
