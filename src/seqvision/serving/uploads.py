"""A ``multipart/form-data`` body parsed as it arrives: every file streamed to its own file in the
request's temporary folder, every byte counted, every limit checked on the way.

Starlette's form parser reads the whole body before the endpoint runs and spools files into the
system's temporary folder; this reader lets the endpoint stop at the first byte over the limit, at
the first file over the image count and at the first part that is not an image or a video, and
writes nothing outside the folder it is given.
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from seqvision.data.samples import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from seqvision.serving.errors import ServeError
from seqvision.serving.limits import ServeLimits

FILES_FIELD = "files"  # each image (in order) or the one video
SAMPLE_FIELD = "sample"  # optional: the id the prediction rows carry
MAX_FIELD_BYTES = 1024  # a form field that is not a file (the sample id)
USAGE = f"send images (field '{FILES_FIELD}', repeated, in order) or one video as multipart/form-data"


@dataclass
class Upload:
    """One uploaded file: the client's name (for messages and per-image rows) and where it was written."""

    name: str
    path: Path  # inside the request's temporary folder, named by position: the client's name is never a path
    kind: str  # "image" | "video", from the name's extension (or the part's Content-Type)
    size: int = 0


def multipart_boundary(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type; 415 for another type, 400 without one."""
    kind, options = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        shown = kind.decode("latin-1") or "none"
        raise ServeError(415, f"Content-Type {shown}: {USAGE}")
    if not options.get(b"boundary"):
        raise ServeError(400, f"multipart body without a boundary in its Content-Type: {USAGE}")
    return options[b"boundary"]


def upload_kind(name: str, content_type: str | None) -> str | None:
    """``image`` or ``video`` from the file name's extension, else from the part's Content-Type (a
    browser's Blob is named ``blob``); None when neither says."""
    suffix = PurePosixPath(name.replace("\\", "/")).suffix.lower()
    if suffix not in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS and content_type:
        suffix = (mimetypes.guess_extension(content_type.split(";")[0].strip().lower()) or "").lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    return None


def suffix_of(name: str, kind: str, content_type: str | None) -> str:
    """The extension the stored copy gets: the client's when it is a known one (decoders look at it)."""
    suffix = PurePosixPath(name.replace("\\", "/")).suffix.lower()
    if suffix in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS:
        return suffix
    guessed = (mimetypes.guess_extension((content_type or "").split(";")[0].strip().lower()) or "").lower()
    return guessed if guessed in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS else (".png" if kind == "image" else ".mp4")


class UploadReader:
    """Feed it a ``multipart/form-data`` body chunk by chunk (:meth:`feed`), then :meth:`finish`.

    Raises :class:`ServeError` as soon as the body is over ``limits.max_request_mb`` (413), holds more
    than ``limits.max_images`` files (413), a part is not an image or a video by its name (415), mixes
    images with a video or holds two videos (400), or is not valid multipart (400).
    """

    def __init__(self, content_type: str | None, folder: Path, limits: ServeLimits) -> None:
        self.folder = folder
        self.limits = limits
        self.uploads: list[Upload] = []
        self.fields: dict[str, str] = {}
        self.received = 0  # body bytes so far
        self._headers: dict[str, str] = {}
        self._header = [b"", b""]  # the header being read: name, value
        self._part: Upload | None = None  # the file part being written
        self._field: tuple[str, bytearray] | None = None  # the plain field being read
        self._out: BinaryIO | None = None
        callbacks = {
            "on_part_begin": self._begin, "on_header_field": self._header_name, "on_header_value": self._header_value,
            "on_header_end": self._header_end, "on_headers_finished": self._headers_done,
            "on_part_data": self._data, "on_part_end": self._end,
        }
        self._parser = MultipartParser(multipart_boundary(content_type), callbacks)

    def feed(self, chunk: bytes) -> None:
        """Count and parse the next piece of the body (writes file data to disk: call it off the event loop)."""
        self.received += len(chunk)
        if self.received > self.limits.max_request_bytes:
            raise ServeError(413, f"request body over the {self.limits.max_request_mb:g} MB limit: send fewer or smaller files")
        try:
            self._parser.write(chunk)
        except FormParserError as exc:
            raise ServeError(400, f"malformed multipart body ({exc}): {USAGE}") from None

    def finish(self) -> tuple[list[Upload], dict[str, str]]:
        """The uploaded files (in the order sent) and the plain fields, once the whole body is in."""
        try:
            self._parser.finalize()
        except FormParserError as exc:
            raise ServeError(400, f"malformed multipart body ({exc}): {USAGE}") from None
        if self._out is not None or self._field is not None:
            raise ServeError(400, f"multipart body ends inside a part (cut short?): {USAGE}")
        if not self.uploads:
            raise ServeError(400, f"empty request: no files. {USAGE.capitalize()}")
        return self.uploads, self.fields

    def close(self) -> None:
        """Close the file being written, if any (after an error; the folder is removed by the caller)."""
        if self._out is not None:
            self._out.close()
            self._out = None

    # -- the parser's callbacks --------------------------------------------------------------------

    def _begin(self) -> None:
        self._headers = {}

    def _header_name(self, data: bytes, start: int, end: int) -> None:
        self._header[0] += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._header[1] += data[start:end]

    def _header_end(self) -> None:
        name, value = self._header
        self._headers[name.decode("latin-1").lower()] = value.decode("utf-8", errors="replace")
        self._header = [b"", b""]

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", ""))
        field = options.get(b"name", b"").decode("utf-8", errors="replace")
        if b"filename" not in options:
            if field != SAMPLE_FIELD:
                raise ServeError(400, f"form field {field!r} is not a file: {USAGE} (and optionally '{SAMPLE_FIELD}', the id)")
            self._field = (field, bytearray())
            return
        if field != FILES_FIELD:
            raise ServeError(400, f"unknown file field {field!r}: {USAGE}")
        self._open(options[b"filename"].decode("utf-8", errors="replace"))

    def _open(self, name: str) -> None:
        """Check the next file by its name (and the images so far), then open its stored copy."""
        content_type = self._headers.get("content-type")
        kind = upload_kind(name, content_type)
        if kind is None and not name:  # a form's file input left empty: dropped at its end if it is empty
            self._part, self._out = Upload(name="", path=self.folder / "unnamed", kind="unknown"), open(self.folder / "unnamed", "wb")
            return
        if kind is None:
            raise ServeError(415, f"upload {name!r} is not an image or a video by its name or Content-Type "
                                  f"(images: {', '.join(sorted(IMAGE_EXTENSIONS))}; videos: {', '.join(sorted(VIDEO_EXTENSIONS))})")
        kinds = {u.kind for u in self.uploads} | {kind}
        if "video" in kinds and len(self.uploads) >= 1:
            raise ServeError(400, f"upload {name!r}: a request holds one video, or images only; send each video in its own request")
        images = len(self.uploads) + 1
        if images > self.limits.max_images:
            raise ServeError(413, f"more than {self.limits.max_images} images in one request (the limit): send fewer")
        path = self.folder / f"{len(self.uploads):04d}{suffix_of(name, kind, content_type)}"
        self._part = Upload(name=name, path=path, kind=kind)
        self._out = open(path, "wb")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._out is not None:
            self._out.write(data[start:end])
            self._part.size += end - start
        elif self._field is not None:
            value = self._field[1]
            value += data[start:end]
            if len(value) > MAX_FIELD_BYTES:
                raise ServeError(413, f"form field {self._field[0]!r} is over {MAX_FIELD_BYTES} bytes")

    def _end(self) -> None:
        if self._field is not None:
            self.fields[self._field[0]] = self._field[1].decode("utf-8", errors="replace")
            self._field = None
            return
        self.close()
        part, self._part = self._part, None
        if part is None:
            return
        if part.kind == "unknown":
            part.path.unlink(missing_ok=True)
            if part.size:
                raise ServeError(415, "a file without a name or Content-Type: name each file with its extension (e.g. f0.jpg)")
            return
        if part.size == 0:
            raise ServeError(400, f"upload {part.name!r} is empty (0 bytes)")
        self.uploads.append(part)
