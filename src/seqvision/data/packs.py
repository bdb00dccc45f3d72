"""Packed data: samples stored in WebDataset-style tar shards, read back as ordinary :class:`Sample`\\ s.

A pack folder (written by :func:`seqvision.data.pack_writer.pack`, ``seqvision pack``) holds::

    PACK/index.json                  every sample: id, label/targets/group/split, its shard and the byte
                                     range and sha256 of each of its members; the shards' sizes; the options
    PACK/shard-<run>-00000.tar       members named the WebDataset way: <key>.<n>.<ext> (the n-th image, its
                                     original bytes), or <key>.<ext> (a video file), and <key>.json

A packed image is addressed by the path ``PACK/<shard>.tar/<member>``: it is not a file, but every reader
of the data layer (:func:`~seqvision.data.images.load_image`, the video decoder, the feature cache's
identity) asks :func:`member_of` first and reads the member's byte range from its shard. So everything
above the data layer sees ordinary samples and paths, and the index alone (no tar is opened) gives the
samples, their groups and splits. A member's bytes are the original file's bytes, so its identity in the
feature cache, its sha256, is the same as the file's read from its folder with ``--content-hash``.

A pack may be given by URL (``s3://bucket/pack/``, ``https://host/pack/``; the pack folder uploaded as it
is): its index is read through fsspec (once per version of the object), its members' paths are the URL's
(folded into a Path, :mod:`seqvision.data.remote`), and a member is a ranged read of its shard through
one open file per shard and process (:mod:`seqvision.data.remote_shards`), so reading a shard's members
in order is one request per block of the shard, not one per image. A ``file://`` URL is a local pack.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from seqvision.data import remote_shards
from seqvision.data.remote import is_url, read_bytes, shown, suffix, to_path, url_of, version_or_none
from seqvision.data.samples import FrameRef, Sample, VideoClip
from seqvision.errors import BadFileError, DataError

INDEX_NAME = "index.json"
FORMAT = "seqvision-pack"
VERSION = 1
SHUFFLE_BUFFER = 256  # samples a training worker draws from at random: its reads stay within a window of its shard


def is_pack(path: str | Path | None) -> bool:
    """Whether ``path`` is a pack folder (it holds an ``index.json`` of this format). A URL asks the store
    whether its ``index.json`` exists (one request); a store that cannot answer is one line naming it."""
    if path is None:
        return False
    remote = _remote_folder(path)
    if remote is not None:
        if suffix(remote) in (".csv", ".jsonl"):  # a manifest by URL: no request for an index beside it
            return False
        found = version_or_none(remote / INDEX_NAME)
        return found is not None and _load_index(remote, *found).get("format") == FORMAT
    index = Path(_local(path)) / INDEX_NAME
    if not index.is_file():
        return False
    try:
        return _load_index(index.parent, *_version(index)).get("format") == FORMAT
    except DataError:
        return True  # an unreadable index of a pack: reading it says what is wrong


def read_index(pack: str | Path) -> dict:
    """The parsed ``index.json`` of ``pack`` (a folder or a URL); a :class:`DataError` naming the file when it
    is unreadable."""
    remote = _remote_folder(pack)
    if remote is not None:
        found = version_or_none(remote / INDEX_NAME)
        if found is None:
            raise DataError(f"{shown(remote / INDEX_NAME)}: the pack's index does not exist; upload the whole pack "
                            f"folder (its {INDEX_NAME} and shards), or give the folder that holds them")
        index = _load_index(remote, *found)
        _KNOWN[str(remote)] = index
        return index
    folder = Path(_local(pack))
    # every image read of a pack asks (twice with the feature cache): resolve() is a system call per part of
    # the path, and read_pack's paths are absolute already
    folder = folder if folder.is_absolute() else folder.resolve()
    return _load_index(folder, *_version(folder / INDEX_NAME))


def _version(index: Path) -> tuple[int, int]:
    try:
        st = index.stat()
    except OSError as exc:
        raise DataError(f"{index}: cannot read the pack's index ({exc.strerror or exc}); pack the data again") from None
    return st.st_size, st.st_mtime_ns


def _remote_folder(path: str | Path) -> Path | None:
    """The pack folder a URL (as given, or folded into a Path) names, as a folded Path without its final
    slash; None for a local path or a ``file://`` URL."""
    text = str(path)
    if is_url(text):
        return None if text[:7].lower() == "file://" else to_path(text.rstrip("/"))
    return Path(text) if url_of(text) is not None else None


def _local(path: str | Path) -> str | Path:
    """A ``file://`` URL's local path; any other path as it is."""
    return to_path(str(path)) if is_url(str(path)) else path


# a pack URL -> the index last read from it in this process: member_of asks per image read, and asking the
# store whether the index changed would be a request per image; each command's discovery reads it anew
_KNOWN: dict[str, dict] = {}


@lru_cache(maxsize=64)
def _load_index(folder: Path, size: int, mtime_ns: int) -> dict:
    """The index of ``folder``, parsed once per version of the file in this process (every image read asks);
    for a URL, ``mtime_ns`` stands for the object's ETag."""
    path = folder / INDEX_NAME
    try:
        text = read_bytes(path).decode() if url_of(folder) is not None else path.read_text()
        index = json.loads(text)
        if index.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} index")
        if index.get("version") != VERSION:
            raise ValueError(f"format version {index.get('version')!r}, this seqvision reads {VERSION}")
        members = {}
        for sample in index["samples"]:
            shard = index["shards"][sample["shard"]]["name"]
            for m in sample["members"]:
                members[shard, m["name"]] = (m["offset"], m["size"], m["sha256"])
        index["_members"] = members  # (shard, member name) -> (offset, size, sha256)
        index["_shards"] = {record["name"]: record for record in index["shards"]}  # name -> bytes, mtime_ns, samples
    except BadFileError as exc:  # the store's failure, worded by remote.py (the URL shown without credentials)
        raise DataError(f"{exc}; the pack's {INDEX_NAME} cannot be read") from None
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise DataError(f"{shown(path)}: not a readable pack index ({type(exc).__name__}: {exc}); pack the data again") from None
    return index


@dataclass(frozen=True)
class Member:
    """One member of a shard: ``size`` bytes from ``offset`` in ``shard`` (a file, or a URL folded into a Path)."""

    path: Path  # PACK/<shard>/<member>: how samples name it
    shard: Path
    offset: int
    size: int
    sha256: str  # of its bytes, as packed
    shard_bytes: int  # the shard's size as packed (a shorter shard is truncated)

    @property
    def remote(self) -> bool:
        return url_of(self.shard) is not None

    def check(self) -> None:
        """Raise :class:`BadFileError` when the shard is missing or cut short before this member's end."""
        try:
            actual = self._shard_size()
        except FileNotFoundError:
            raise BadFileError(shown(self.path), f"shard {self.shard.name} is missing from the pack (listed in its "
                                                 f"{INDEX_NAME}); restore it or pack the data again") from None
        except OSError as exc:
            raise BadFileError(self.path, f"shard {self.shard.name} cannot be read ({exc.strerror or exc})") from None
        if actual < self.offset + self.size:
            raise BadFileError(shown(self.path), f"shard {self.shard.name} is truncated ({actual} of {self.shard_bytes} bytes): "
                                                 f"this member ends at byte {self.offset + self.size}; restore the shard or pack the data again")

    def _shard_size(self) -> int:
        """The shard's size now: a stat, or the size the store gave when this process opened it (a URL:
        asked once per shard and process, never per member)."""
        if not self.remote:
            return self.shard.stat().st_size
        opened = remote_shards.shard_file(self.shard)
        if opened is None:
            raise FileNotFoundError(url_of(self.shard))
        return opened.size

    def read(self) -> bytes:
        """The member's bytes."""
        if not self.remote:
            with self.open() as fh:
                return fh.read()
        self.check()
        data = remote_shards.read_range(self.shard, self.offset, self.size)
        if len(data) != self.size:  # the shard was cut short in the store while it was being read
            raise BadFileError(shown(self.path), f"shard {self.shard.name} ended after {self.offset + len(data)} bytes, "
                                                 f"before this member's end at byte {self.offset + self.size}; restore the shard")
        return data

    def open(self) -> io.BufferedReader:
        """A seekable binary file over the member's bytes only (PyAV reads a packed video through it)."""
        self.check()
        if self.remote:
            source = _RangeFile(lambda pos, n: remote_shards.read_range(self.shard, pos, n), self.offset, self.size)
        else:
            fh = open(self.shard, "rb")
            source = _RangeFile(lambda pos, n: (fh.seek(pos), fh.read(n))[1], self.offset, self.size, close=fh.close)
        return io.BufferedReader(source, buffer_size=1 << 16)

    def version(self) -> tuple[int, int]:
        """(size, modification time) standing in for a file's stat: the shard's time, so a repack is seen
        (a URL: the number standing for the shard's ETag)."""
        self.check()
        if self.remote:
            return self.size, remote_shards.shard_file(self.shard).tag
        return self.size, self.shard.stat().st_mtime_ns

    def identity(self) -> str:
        """``sha256:<hex>`` of the member's bytes: the index's digest while the shard is the one packed
        (same size and modification time as recorded; a URL: the same size, since an upload gives the
        object a time of its own), else computed from the bytes."""
        self.check()
        record = read_index(self.shard.parent)["_shards"][self.shard.name] if not self.remote else \
            _KNOWN[str(self.shard.parent)]["_shards"][self.shard.name]
        if self.remote:
            packed = self._shard_size() == record["bytes"]
        else:
            st = self.shard.stat()
            packed = (st.st_size, st.st_mtime_ns) == (record["bytes"], record["mtime_ns"])
        if packed:
            return "sha256:" + self.sha256
        digest = hashlib.sha256()
        with self.open() as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return "sha256:" + digest.hexdigest()


class _RangeFile(io.RawIOBase):
    """Bytes ``[offset, offset + size)`` of a shard as a file of their own (read and seek), through
    ``read_at(position, count)`` of the shard (a local file's seek and read, or a ranged read of a URL)."""

    def __init__(self, read_at: Callable[[int, int], bytes], offset: int, size: int, close: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._read_at, self._close = read_at, close
        self._start, self._size, self._pos = offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self._size - self._pos))
        if n == 0:
            return 0
        data = self._read_at(self._start + self._pos, n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if self._close is not None and not self.closed:
            self._close()
        super().close()


def member_of(path: str | Path) -> Member | None:
    """The shard member ``path`` names (``PACK/<shard>.tar/<member>``), or None for an ordinary path.
    Costs a string test for an ordinary path, and a stat of the index for a member (a URL: nothing after
    the pack's index was read in this process; see :data:`_KNOWN`)."""
    path = Path(path)
    shard = path.parent
    if shard.suffix != ".tar":
        return None
    if url_of(shard) is not None:
        index = _KNOWN.get(str(shard.parent))
        if index is None:  # a pack not discovered in this process (a worker started by spawn), or no pack
            if not is_pack(shard.parent):
                return None
            index = read_index(shard.parent)
    elif not (shard.parent / INDEX_NAME).is_file():
        return None
    else:
        index = read_index(shard.parent)
    found = index["_members"].get((shard.name, path.name))
    if found is None:
        return None
    return Member(path, shard, found[0], found[1], found[2], index["_shards"][shard.name]["bytes"])


def is_member_path(path: Path) -> bool:
    """Whether ``path`` looks like a shard member (its folder is a ``.tar`` name); no file is touched."""
    return Path(path).parent.suffix == ".tar"


def shard_name(sample: Sample) -> str:
    """The shard a packed sample's members are in."""
    path = sample.video.path if sample.video is not None else sample.frames[0].path
    return path.parent.name


def read_pack(pack: str | Path) -> list[Sample]:
    """The samples of a pack folder (or URL), from its index alone (no shard is opened), in packing order.
    A URL's shards open in this process before are closed: this command reads them afresh."""
    remote = _remote_folder(pack)
    folder = remote if remote is not None else Path(_local(pack)).resolve()
    index = read_index(folder)
    if remote is not None:
        remote_shards.forget(remote)
    samples = []
    for entry in index["samples"]:
        shard = index["shards"][entry["shard"]]["name"]
        paths = [folder / shard / m["name"] for m in entry["members"]]
        video = entry.get("video")
        samples.append(Sample(
            id=entry["id"],
            frames=[] if video else [FrameRef(p) for p in paths],
            label=entry.get("label"),
            targets=entry.get("targets"),
            split=entry.get("split"),
            group=entry.get("group"),
            source=f"{shown(folder / shard)} ({entry['key']})",
            video=VideoClip(paths[0], video.get("start"), video.get("end")) if video else None,
            labels=entry.get("labels"),
            frame_labels=entry.get("frame_labels"),
            frame_targets=entry.get("frame_targets"),
        ))
    return samples
