"""Decode one image file to an RGB ``uint8`` tensor ``(3, H, W)``.

JPEG takes torchvision's libjpeg path (fast, EXIF orientation applied); everything else goes through
Pillow, which knows every mode: grayscale, RGBA, palette and 16-bit images all become 8-bit RGB.

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

from seqvision.errors import BadFileError

# Decompression-bomb guard: refuse images of more than this many pixels (10k x 10k, 300 MB as RGB)
# before decoding them, so memory stays bounded whatever a file's header claims.
MAX_PIXELS = 100_000_000
_WARNINGS_LOCK = threading.Lock()




def load_image(path: str | Path, *, decode_size: int | None = None) -> torch.Tensor:
    """Read ``path`` as RGB ``uint8`` ``(3, H, W)``; raise :class:`BadFileError` naming the file.
    ``decode_size``: a large JPEG may be decoded reduced, its shorter side no smaller than this."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadFileError(path, "file does not exist") from None
    except OSError as exc:
        raise BadFileError(path, f"cannot be read ({exc.strerror or exc})") from None
    if not data:
        raise BadFileError(path, "empty file (0 bytes)")
    if data[:3] == b"\xff\xd8\xff":
        return _decode_jpeg(path, data, decode_size)
    return _decode_pillow(path, data)


def _decode_jpeg(path: Path, data: bytes, decode_size: int | None = None) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg

    # libjpeg treats a missing end marker as a warning and pads with grey: a truncated file would
    # silently train on half an image, so check for the end-of-image marker ourselves.
    if b"\xff\xd9" not in data[-4096:]:
        raise BadFileError(path, "truncated JPEG (no end-of-image marker); re-export or remove the file")
    try:
        with Image.open(io.BytesIO(data)) as header:  # parses the header only: the size, before decoding
            _check_size(path, header.height, header.width)
            reduce = decode_size is not None and min(header.size) >= 2 * decode_size
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError, ValueError):
        reduce = False  # let the decoders below report what is wrong with it
    if reduce:
        return _decode_pillow(path, data, decode_size=decode_size)
    try:
        # catch_warnings swaps process-wide state: two threads inside it at once would leave a recorder
        # installed for good and could pin one image's libjpeg warning on another. One decode at a
        # time holds it (the decoding threads still overlap each other's resizing).
        with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            image = decode_jpeg(raw, mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except RuntimeError:
        return _decode_pillow(path, data)  # CMYK/odd JPEGs: let Pillow try (it raises a clear error if not)
    # torchvision 0.29 deprecates its decoders (DeprecationWarning, harmless); any other warning is
    # libjpeg reporting corrupt data: let Pillow decide.
    if any(not issubclass(w.category, DeprecationWarning) for w in caught):
        return _decode_pillow(path, data)
    _check_size(path, image.shape[1], image.shape[2])
    return image


def _check_size(path: Path, height: int, width: int) -> None:
    if height * width > MAX_PIXELS:
        raise BadFileError(path, f"{width}x{height} pixels is larger than the {MAX_PIXELS:,}-pixel limit (a decompression bomb?)")


def _decode_pillow(path: Path, data: bytes, *, decode_size: int | None = None) -> torch.Tensor:
    """``data`` (the bytes of ``path``, already read) decoded by Pillow; errors name ``path``.
    ``decode_size``: a JPEG is decoded at the smallest DCT scale whose shorter side is at least this."""
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():  # the lock: see _decode_jpeg
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS decides, below
            opened = Image.open(io.BytesIO(data))  # reads the header only (where Pillow's bomb check warns)
        with opened as img:
            _check_size(path, img.height, img.width)
            if decode_size is not None and img.format == "JPEG":
                scale = decode_size / min(img.size)  # draft keeps both sides >= the size asked for
                img.draft("RGB", (math.ceil(img.width * scale), math.ceil(img.height * scale)))
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb(img)
    except BadFileError:
        raise
    except Image.DecompressionBombError:
        raise BadFileError(path, f"larger than the {MAX_PIXELS:,}-pixel limit (a decompression bomb?)") from None
    except UnidentifiedImageError as exc:
        raise BadFileError(path, f"not a readable image ({type(exc).__name__})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadFileError(path, f"corrupt or truncated image ({exc})") from None
    array = np.asarray(rgb, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


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
