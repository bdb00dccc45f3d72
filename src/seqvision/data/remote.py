"""Data named by URL (``s3://``, ``gs://``, ``az://``, ``https://`` ...): read through fsspec, with a
timeout, retries on transient errors, and one line naming the object when it cannot be had.

A URL travels through the data layer as a :class:`~pathlib.Path` whose text is the URL with its ``//``
folded (``Path("s3://bucket/a.jpg")`` is ``s3:/bucket/a.jpg``), as a packed image travels as a path into
its shard (:mod:`seqvision.data.packs`): samples, splits and sampling stay plain paths, and every reader
asks :func:`url_of` first. ``file://`` URLs become ordinary local paths. What a URL's path folds away (a
``//`` or ``.`` inside an object key) is not read back; such keys are not supported.

Credentials come only from where fsspec's backends look (environment variables, profiles, instance
roles; ``AWS_ENDPOINT_URL_S3`` for another S3 endpoint); a URL printed in a message is shown without its
password, query and fragment (:func:`seqvision.redact.without_password`). Two environment variables tune
the reads: ``SEQVISION_REMOTE_TIMEOUT`` (seconds per request, default 60) and ``SEQVISION_REMOTE_RETRIES``
(further tries of a transient failure, default 3, 0.5 s doubling between them). A missing object (404)
or a refused one (401/403, wrong credentials) is never retried.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from seqvision.errors import BadFileError, ConfigError, DataError
from seqvision.redact import without_password

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")  # a scheme of 2+ letters: "C://x" stays a Windows path
_FOLDED = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/(?!/)")  # the same URL as pathlib writes it
TIMEOUT_ENV, RETRIES_ENV = "SEQVISION_REMOTE_TIMEOUT", "SEQVISION_REMOTE_RETRIES"
BACKOFF_S = 0.5  # the first wait before a retry; it doubles with each
_EXTRA = "pip install 'seqvision[remote]'"


@dataclass(frozen=True)
class Settings:
    timeout: float  # seconds a request may take (connect or read) before it counts as failed
    retries: int  # further tries of a transient failure


def settings() -> Settings:
    """The read settings from the environment; a :class:`ConfigError` naming the variable if malformed."""
    try:
        timeout = float(os.environ.get(TIMEOUT_ENV) or 60)
        retries = int(os.environ.get(RETRIES_ENV) or 3)
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV} must be a number of seconds and {RETRIES_ENV} a whole number") from None
    if not timeout > 0 or retries < 0:
        raise ConfigError(f"{TIMEOUT_ENV} must be positive and {RETRIES_ENV} 0 or more (got {timeout:g}, {retries})")
    return Settings(timeout, retries)


def is_url(text: str | Path) -> bool:
    """Whether ``text`` is a URL as written (``scheme://...``); a Path never is (see :func:`url_of`)."""
    return isinstance(text, str) and _URL.match(text) is not None


def to_path(url: str) -> Path:
    """The path a URL travels as: a ``file://`` URL's local path, else the URL folded into a Path."""
    if url[:7].lower() == "file://":
        return Path(url2pathname(urlsplit(url).path))
    return Path(url)


def url_of(path: str | Path) -> str | None:
    """The URL ``path`` stands for (see the module's docstring), or None for a local path. A string test."""
    text = str(path)
    found = _FOLDED.match(text)
    if found is None:
        return None
    return f"{found.group(1)}://{text[found.end():]}"


def shown(path: str | Path) -> str:
    """``path`` as a message or a report may show it: a URL unfolded, without password or query."""
    url = url_of(path)
    return str(path) if url is None else without_password(url)


def join(base: Path, text: str) -> Path:
    """``text`` (a manifest's path value) against the manifest's folder ``base``: a URL stands alone; a
    relative path under a remote manifest is a key beside it (``..`` resolved in the URL's path)."""
    if is_url(text):
        return to_path(text)
    joined = base / text
    if url_of(base) is not None and ".." in Path(text).parts:
        scheme, _, rest = str(joined).partition(":/")
        joined = Path(f"{scheme}:/{posixpath.normpath(rest)}")
    return joined


def check_protocol(url: str, where: str) -> None:
    """Refuse, before any work, a URL whose protocol fsspec does not know or whose backend is not installed."""
    import fsspec

    protocol = _URL.match(url).group(1).lower()
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise ConfigError(f"{where}: {without_password(url)}: fsspec knows no protocol {protocol!r}") from None
    except ImportError as exc:
        raise ConfigError(f"{where}: reading {protocol}:// URLs needs a package that is not installed ({exc}); "
                          f"{_EXTRA} (or the fsspec backend for {protocol})") from None


def _filesystem(protocol: str, timeout: float):
    """fsspec's filesystem for ``protocol`` with the timeout applied where its backend takes one (fsspec
    keeps one instance per set of arguments, so this costs nothing after the first call)."""
    import fsspec

    options: dict = {}
    if protocol in ("http", "https"):
        import aiohttp

        options = {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=timeout)}}
    elif protocol in ("s3", "s3a"):
        # one try per request inside botocore (its max_attempts would count the retries after it): the retries
        # are ours, so a missing object is not retried
        options = {"config_kwargs": {"connect_timeout": timeout, "read_timeout": timeout, "retries": {"total_max_attempts": 1}},
                   # an image is one GET: with concurrency s3fs first HEADs every object for its size (to split a
                   # large one into parallel ranges), two requests per image; videos are read by ranges anyway
                   "max_concurrency": 1}
    elif protocol in ("gs", "gcs"):
        options = {"timeout": timeout}
    fs = fsspec.filesystem(protocol, **options)
    if protocol in ("s3", "s3a"):
        # s3fs retries a timeout 5 times itself (an attribute, not an argument): a stalled store would take
        # 5 x (retries + 1) timeouts before the one line, and "after N tries" would be untrue
        fs.retries = 1
    return fs


def read_bytes(path: str | Path) -> bytes:
    """The bytes of the object ``path`` stands for (:func:`url_of`), with the timeout and retries of
    :func:`settings`; a :class:`BadFileError` naming the URL (shown redacted) when they cannot be had."""
    url = url_of(path)
    assert url is not None, path
    return retried(path, lambda fs: fs.cat_file(url))


def retried(path: str | Path, call):
    """``call(filesystem)`` for the URL ``path`` stands for, tried again on transient errors (:func:`settings`);
    a :class:`BadFileError` naming the URL (shown redacted) when it fails for good. A ``call`` that keeps
    state (an open file) drops it before raising, so the next try starts afresh."""
    config = settings()
    protocol = url_of(path).split("://", 1)[0].lower()
    attempt = 0
    while True:
        try:
            return call(_filesystem(protocol, config.timeout))
        except ImportError as exc:
            raise DataError(f"{shown(path)}: cannot read {protocol}:// URLs ({exc}); {_EXTRA}") from None
        except Exception as exc:  # noqa: BLE001 - each backend has its own errors; sorted below
            reason, transient = _reason(exc, config.timeout)
            if not transient or attempt >= config.retries:
                what, semicolon, fix = reason.partition(";")
                tries = f" (after {attempt + 1} tries)" if attempt else ""
                raise BadFileError(shown(path), f"{what}{tries}{semicolon}{fix}") from None
        time.sleep(BACKOFF_S * 2**attempt)
        attempt += 1


def _reason(exc: Exception, timeout: float) -> tuple[str, bool]:
    """What went wrong in words (no URL, no credential), and whether trying again may help."""
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    name = type(exc).__name__
    if isinstance(exc, FileNotFoundError) or status == 404:
        return "object does not exist (404); fix the manifest or restore the object", False
    if isinstance(exc, PermissionError) or status in (401, 403) or "Credentials" in name:
        return ("access denied (wrong or missing credentials, or no permission); set the credentials in the "
                "environment or profile the backend reads (for S3: AWS_ACCESS_KEY_ID / AWS_PROFILE)"), False
    if isinstance(exc, (TimeoutError,)) or "Timeout" in name:
        return f"no answer within {timeout:g} s; raise {TIMEOUT_ENV} for a slow store", True
    if isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):
        return f"refused by the server (HTTP {status})", False
    if isinstance(exc, ValueError) and "range requests" in str(exc):  # fsspec's http://: a 200 with the whole file
        return ("the HTTP server does not answer byte-range requests (Range: bytes=...), which reading part of a "
                "file (a packed image, a block of a shard) needs; serve it from a server that does (nginx, Apache, "
                "S3, most CDNs) or copy it to a local folder"), False
    if isinstance(exc, (IsADirectoryError, NotADirectoryError, ValueError)):
        return f"not an object that can be read ({name})", False
    detail = f"HTTP {status}" if isinstance(status, int) else name
    return f"cannot be read ({detail})", True


def content_identity(path: str | Path) -> str:
    """``sha256:<hex>`` of the object's bytes: a URL's identity in the feature cache, the same as the same
    bytes read from a local file with ``--content-hash`` (a changed object misses). Streamed: a long
    video is hashed block by block, never held whole."""
    digest = hashlib.sha256()
    with open_file(path, block_size=4 << 20) as fh:
        for block in iter(lambda: fh.read(4 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def open_text(path: Path) -> io.StringIO:
    """A remote manifest's text (read whole: a manifest is read once, row by row, from memory).
    Undecodable bytes raise UnicodeDecodeError, as reading a local file does."""
    return io.StringIO(read_bytes(path).decode("utf-8-sig"), newline="")


def suffix(path: str | Path) -> str:
    """The lower-case suffix of ``path``'s file name; a URL's without its query (``m.csv?sig=..``: .csv)."""
    url = url_of(path) or (path if is_url(path) else None)
    return Path(urlsplit(url).path if url else path).suffix.lower()


Tree = dict[Path, tuple[list[Path], list[Path], list[Path]]]  # folder -> (images, sub-folders, videos)


def list_tree(url: str) -> tuple[Path, Tree]:
    """Every object under the folder ``url`` (a prefix), listed once through fsspec, as the folders a
    local scan would see: ``(root, {folder: (images, sub-folders, videos)})``, paths as :func:`to_path`
    makes them, each list in natural order, hidden entries left out. One listing call (S3 lists 1,000
    keys per request); a failure is one line naming the URL."""
    from seqvision.data.samples import is_image_file, is_video_file, natural_key

    root = to_path(url.rstrip("/"))
    found = retried(root, lambda fs: fs.find(url))  # keys: without the protocol (object stores) or whole URLs
    prefix = str(url_of(root)).split("://", 1)[1]
    tree: dict[Path, tuple[set, set, set]] = {root: (set(), set(), set())}
    for key in found:
        rel = (key.split("://", 1)[1] if "://" in key else key)[len(prefix):].strip("/")
        parts = rel.split("/")
        if not rel or any(p.startswith(".") for p in parts):
            continue
        folder = root
        for part in parts[:-1]:
            tree.setdefault(folder, (set(), set(), set()))[1].add(folder / part)
            folder = folder / part
        file = folder / parts[-1]
        entry = tree.setdefault(folder, (set(), set(), set()))
        if is_image_file(file):
            entry[0].add(file)
        elif is_video_file(file):
            entry[2].add(file)
    ordered = {folder: tuple(sorted(group, key=lambda p: natural_key(p.name)) for group in entry) for folder, entry in tree.items()}
    return root, ordered  # type: ignore[return-value]


def has_shards(url: str) -> bool:
    """Whether the folder ``url`` holds ``.tar`` objects directly (asked only to word an error: a pack
    uploaded without its index)."""
    root = to_path(url.rstrip("/"))
    return bool(retried(root, lambda fs: fs.glob(f"{url_of(root)}/*.tar")))


def open_file(path: str | Path, *, block_size: int = 1 << 20) -> io.BufferedReader:
    """A seekable binary file over the object ``path`` stands for, read by ranged requests of
    ``block_size`` bytes: a video's index and the frames sought are fetched, never the whole file. A read
    that fails is a :class:`BadFileError` naming the URL (PyAV hands it back from its decoding calls)."""
    url = url_of(path)
    assert url is not None, path
    handle = retried(path, lambda fs: fs.open(url, "rb", block_size=block_size, cache_type="readahead"))
    return io.BufferedReader(_Reads(path, handle), buffer_size=1 << 16)


def version(path: str | Path) -> tuple[int, int]:
    """(size, a number standing for the object's ETag or modification time): what a local file's stat
    gives, so headers read once per version of an object are read again when it changes."""
    url = url_of(path)
    return version_of(retried(path, lambda fs: fs.info(url)))


def version_or_none(path: str | Path) -> tuple[int, int] | None:
    """:func:`version`, or None when the object does not exist (a 404: asked whether a pack's index is there)."""
    url = url_of(path)

    def info(fs):
        try:
            return fs.info(url)
        except FileNotFoundError:
            return None

    found = retried(path, info)
    return None if found is None else version_of(found)


def version_of(info: dict) -> tuple[int, int]:
    """:func:`version` from an fsspec ``info`` record (an open fsspec file's ``details``)."""
    tag = info.get("ETag") or info.get("LastModified") or info.get("mtime") or ""
    return int(info.get("size") or 0), zlib.crc32(str(tag).encode())


class _Reads(io.RawIOBase):
    """An fsspec file whose failures are :class:`BadFileError` naming the URL (not the backend's errors)."""

    def __init__(self, path: str | Path, handle) -> None:
        super().__init__()
        self._path, self._fh = path, handle

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._fh.tell()

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        return self._fh.seek(pos, whence)

    def readinto(self, buffer) -> int:
        try:
            data = self._fh.read(len(buffer))
        except Exception as exc:  # noqa: BLE001 - each backend has its own errors
            raise BadFileError(shown(self._path), _reason(exc, settings().timeout)[0] + " while reading") from None
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._fh.close()
        super().close()
