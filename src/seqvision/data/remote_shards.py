"""The shards of a pack named by URL (``s3://bucket/pack/shard-....tar``), read member by member through one
open fsspec file per shard and process.

A packed image is a byte range of its shard. A request per range would make every image a round trip to the
store (10-50 ms on S3), which is what packing exists to avoid. So each process keeps a shard it reads open,
with fsspec's block cache: a miss fetches a whole block of :data:`BLOCK` bytes, and the members after it
(extraction, evaluation and prediction read a shard in packing order) or around it (a training worker's
shuffle buffer draws from a window of its shard) come from memory: one request per block, not per image.

Handles belong to the process that opened them: a DataLoader worker started by fork inherits the parent's,
whose connections and event loop are the parent's, so the process id is checked and a child drops them
(unclosed, untouched) and opens its own. A lock per handle: extraction decodes with threads of one process,
and a file's seek and read must be one step. Failures go through :func:`seqvision.data.remote.retried`
(timeouts, retries of transient errors, one line naming the URL); a handle whose read failed is dropped, so
the retry reopens the shard.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqvision.data.remote import retried, url_of, version_of

BLOCK = 4 << 20  # bytes per request: a few MB is one S3 GET of ~50 ms, and ~500 small JPEGs of a shard
BLOCKS = 16  # blocks kept per open shard (64 MiB): a shuffle buffer of 256 samples x 8 images of <=30 KB fits
OPEN = 2  # shards kept open per process: a worker's share of the epoch and its shuffle buffer cross a shard's end


@dataclass
class ShardFile:
    """One shard opened by this process: its fsspec file, its size and version as the store says now."""

    handle: Any  # an fsspec file (s3fs's S3File, ...) with a block cache
    size: int
    tag: int  # stands for the object's ETag: a replaced shard is another version
    lock: threading.Lock = field(default_factory=threading.Lock)


class _OpenShards:
    """This process's open shards, the most recently read last; at most :data:`OPEN` of them."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.files: OrderedDict[str, ShardFile] = OrderedDict()
        self.lock = threading.Lock()

    def mine(self) -> OrderedDict[str, ShardFile]:
        if self.pid != os.getpid():  # a forked child: the parent's files are not ours to use or close
            self.pid, self.files, self.lock = os.getpid(), OrderedDict(), threading.Lock()
        return self.files

    def get(self, shard: Path) -> ShardFile | None:
        """The open shard (None when the store has no such object); opened on first use."""
        key = str(shard)
        with self.lock:
            found = self.mine().get(key)
            if found is not None:
                self.files.move_to_end(key)
                return found
        opened = retried(shard, lambda fs: _open(fs, url_of(shard)))
        if opened is None:
            return None
        with self.lock:
            files = self.mine()
            files[key] = opened
            evicted = [files.popitem(last=False)[1] for _ in range(len(files) - OPEN)]
        for old in evicted:
            _close(old)
        return opened

    def drop(self, key: str) -> None:
        with self.lock:
            found = self.mine().pop(key, None)
        if found is not None:
            _close(found)

    def forget(self, folder: Path) -> None:
        prefix = str(folder) + "/"
        with self.lock:
            keys = [k for k in self.mine() if k.startswith(prefix)]
        for key in keys:
            self.drop(key)


# per process by design (see the module's docstring): a cache of open files, as lru_cache is one of parsed indexes
_SHARDS = _OpenShards()


def _close(opened: ShardFile) -> None:
    """Close a shard no longer kept; under its lock, so a thread reading it finishes first (and a thread that
    took it from the table before it was dropped sees it closed and opens the shard again)."""
    with opened.lock:
        try:
            opened.handle.close()
        except Exception:  # noqa: BLE001 - a handle whose read failed may fail to close: it is dropped either way
            pass


def _open(fs, url: str) -> ShardFile | None:
    try:
        handle = fs.open(url, "rb", block_size=BLOCK, cache_type="blockcache", cache_options={"maxblocks": BLOCKS})
    except FileNotFoundError:
        return None
    details = getattr(handle, "details", None) or {"size": handle.size}
    return ShardFile(handle, int(handle.size), version_of(details)[1])


def shard_file(shard: Path) -> ShardFile | None:
    """The shard ``shard`` (a URL as a folded Path) open in this process, or None when the store has no such
    object; a :class:`~seqvision.errors.BadFileError` naming it when it cannot be opened."""
    return _SHARDS.get(shard)


def read_range(shard: Path, offset: int, size: int) -> bytes:
    """``size`` bytes from ``offset`` of the open shard (fewer where the shard ends first), through its
    block cache; the caller has checked that the shard exists (:func:`shard_file`)."""

    def read(fs) -> bytes:  # fs: retried's filesystem; the shard's own file is used
        while True:
            opened = _SHARDS.get(shard)
            if opened is None:
                raise FileNotFoundError(url_of(shard))
            try:
                with opened.lock:
                    if opened.handle.closed:  # dropped by another thread since it was looked up: open it again
                        continue
                    opened.handle.seek(offset)
                    return opened.handle.read(size)
            except Exception:
                _SHARDS.drop(str(shard))  # the next try reopens it (a cut connection, a timeout)
                raise

    return retried(shard, read)


def forget(folder: Path) -> None:
    """Close this process's open shards of the pack ``folder``: each command reads a pack's shards afresh
    (a shard replaced in the store since is seen), and an idle process holds no cached blocks."""
    _SHARDS.forget(folder)
