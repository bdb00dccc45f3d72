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
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from seqvision.data.samples import FrameRef, Sample, VideoClip
from seqvision.errors import BadFileError, DataError

INDEX_NAME = "index.json"
FORMAT = "seqvision-pack"
VERSION = 1
SHUFFLE_BUFFER = 256  # samples a training worker draws from at random: its reads stay within a window of its shard


def is_pack(path: str | Path | None) -> bool:
    """Whether ``path`` is a pack folder (it holds an ``index.json`` of this format)."""
    if path is None:
        return False
    index = Path(path) / INDEX_NAME
    if not index.is_file():
        return False
    try:
        return _load_index(index.parent, *_version(index)).get("format") == FORMAT
    except DataError:
        return True  # an unreadable index of a pack: reading it says what is wrong


def read_index(pack: str | Path) -> dict:
    """The parsed ``index.json`` of ``pack``; a :class:`DataError` naming the file when it is unreadable."""
    folder = Path(pack)
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


@lru_cache(maxsize=64)
def _load_index(folder: Path, size: int, mtime_ns: int) -> dict:
    """The index of ``folder``, parsed once per version of the file in this process (every image read asks)."""
    path = folder / INDEX_NAME
    try:
        index = json.loads(path.read_text())
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
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise DataError(f"{path}: not a readable pack index ({type(exc).__name__}: {exc}); pack the data again") from None
    return index


@dataclass(frozen=True)
class Member:
    """One member of a shard: ``size`` bytes from ``offset`` in ``shard``."""

    path: Path  # PACK/<shard>/<member>: how samples name it
    shard: Path
    offset: int
    size: int
    sha256: str  # of its bytes, as packed
    shard_bytes: int  # the shard's size as packed (a shorter shard is truncated)

    def check(self) -> None:
        """Raise :class:`BadFileError` when the shard is missing or cut short before this member's end."""
        try:
            actual = self.shard.stat().st_size
        except FileNotFoundError:
            raise BadFileError(self.path, f"shard {self.shard.name} is missing from the pack (listed in its {INDEX_NAME}); "
                                          "restore it or pack the data again") from None
        except OSError as exc:
            raise BadFileError(self.path, f"shard {self.shard.name} cannot be read ({exc.strerror or exc})") from None
        if actual < self.offset + self.size:
            raise BadFileError(self.path, f"shard {self.shard.name} is truncated ({actual} of {self.shard_bytes} bytes): "
                                          f"this member ends at byte {self.offset + self.size}; restore the shard or pack the data again")

    def read(self) -> bytes:
        """The member's bytes."""
        with self.open() as fh:
            return fh.read()

    def open(self) -> io.BufferedReader:
        """A seekable binary file over the member's bytes only (PyAV reads a packed video through it)."""
        self.check()
        return io.BufferedReader(_RangeFile(self.shard, self.offset, self.size), buffer_size=1 << 16)

    def version(self) -> tuple[int, int]:
        """(size, modification time) standing in for a file's stat: the shard's time, so a repack is seen."""
        self.check()
        return self.size, self.shard.stat().st_mtime_ns

    def identity(self) -> str:
        """``sha256:<hex>`` of the member's bytes: the index's digest while the shard is the one packed
        (same size and modification time as recorded), else computed from the bytes."""
        self.check()
        st = self.shard.stat()
        record = read_index(self.shard.parent)["_shards"][self.shard.name]
        if (st.st_size, st.st_mtime_ns) == (record["bytes"], record["mtime_ns"]):
            return "sha256:" + self.sha256
        digest = hashlib.sha256()
        with self.open() as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return "sha256:" + digest.hexdigest()


class _RangeFile(io.RawIOBase):
    """Bytes ``[offset, offset + size)`` of ``path`` as a file of their own (read and seek)."""

    def __init__(self, path: Path, offset: int, size: int) -> None:
        super().__init__()
        self._fh = open(path, "rb")
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
        self._fh.seek(self._start + self._pos)
        got = self._fh.readinto(memoryview(buffer)[:n])
        self._pos += got
        return got

    def close(self) -> None:
        self._fh.close()
        super().close()


def member_of(path: str | Path) -> Member | None:
    """The shard member ``path`` names (``PACK/<shard>.tar/<member>``), or None for an ordinary path.
    Costs a string test for an ordinary path, and a stat of the index for a member."""
    path = Path(path)
    shard = path.parent
    if shard.suffix != ".tar" or not (shard.parent / INDEX_NAME).is_file():
        return None
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
    """The samples of a pack folder, from its index alone (no shard is opened), in packing order."""
    folder = Path(pack).resolve()
    index = read_index(folder)
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
            source=f"{folder / shard} ({entry['key']})",
            video=VideoClip(paths[0], video.get("start"), video.get("end")) if video else None,
            labels=entry.get("labels"),
            frame_labels=entry.get("frame_labels"),
            frame_targets=entry.get("frame_targets"),
        ))
    return samples
