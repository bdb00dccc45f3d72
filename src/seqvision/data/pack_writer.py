"""``seqvision pack``: the samples of a folder or manifest written into WebDataset-style tar shards.

Each sample becomes the members ``<key>.<n>.<ext>`` (its n-th image, the original file's bytes, so the
pixels and the content hash are the file's) or ``<key>.<ext>`` (its video file, whole: the clip's start and
end are in the JSON, so every decode mode and sampling policy reads the same frames as from the file), and
``<key>.json`` (id, label, targets, group, split). ``<key>`` is the sample's number in the pack: ids may
hold dots and slashes, which WebDataset keys may not. A sample never spans two shards. Clips of one video
(manifest rows with a start and end) are each a sample of their own, so each stores a copy of the whole
video: N clips of a video take N times its size.

Nothing partial is left: each shard is written under a temporary name and renamed when complete; the
index is written last (atomically), and only then are the shards of a pack it replaces removed. Shard names
carry a per-pack tag, so a crash part-way leaves the previous pack whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tarfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from seqvision.data.discovery import discover
from seqvision.data.packs import FORMAT, INDEX_NAME, VERSION, is_pack, read_index
from seqvision.data.remote import is_url, open_file, shown, to_path, url_of, version
from seqvision.data.samples import Sample
from seqvision.errors import BadFileError, ConfigError, DataError
from seqvision.io import atomic_write_text

log = logging.getLogger("seqvision")

DEFAULT_SHARD_SIZE = 1_000_000_000  # 1 GB: few files for a file system or object store, yet many per rank
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(text: str) -> int:
    """``"1GB"`` -> 1_000_000_000 (also KB, MB, TB, KiB, MiB, GiB, TiB, B, or a plain number of bytes)."""
    found = _SIZE.fullmatch(str(text))
    unit = found.group(2).lower() if found else None
    if found is None or unit not in _UNITS:
        raise ConfigError(f"--shard-size {text!r} is not a size; use e.g. 500MB, 1GB or 1GiB")
    size = int(float(found.group(1)) * _UNITS[unit])
    if size < 1:
        raise ConfigError(f"--shard-size {text!r} must be at least 1 byte")
    return size


@dataclass
class PackSummary:
    out: Path
    samples: int
    shards: int
    bytes: int


def pack(
    data: str | Path, out: str | Path, *, shard_size: int = DEFAULT_SHARD_SIZE, overwrite: bool = False,
    targets: list[str] | None = None, group_by: str | None = None,
) -> PackSummary:
    """Write the samples of ``data`` (a folder or manifest, with ``targets`` and ``group_by`` as for
    training) into tar shards of about ``shard_size`` bytes in ``out``, with ``out/index.json``.

    An ``out`` that holds another pack (made from other data or with other options) is refused unless
    ``overwrite``; a folder with other files in it is always refused."""
    if is_url(str(out)) and str(out)[:7].lower() != "file://":
        raise ConfigError(f"--out {shown(str(out))}: a pack is written to a local folder; upload that folder as it is "
                          "(e.g. aws s3 sync PACK s3://bucket/pack/) and give its URL as --data")
    out = to_path(str(out)) if is_url(str(out)) else Path(out)
    # a URL (s3://, https://, ...) is discovered and read through fsspec; the index records it without credentials
    source: str | Path = str(data) if is_url(str(data)) else Path(data).resolve()
    if is_pack(source):
        raise ConfigError(f"{data} is a pack already; train on it directly, or pack its source data")
    options = {"source": shown(source) if is_url(source) else str(source), "shard_size": shard_size, "targets": targets,
               "group_by": group_by}
    old = _previous_pack(out, options, overwrite=overwrite)
    samples = discover(source, targets=targets, require_labels=False, group_by=group_by)
    out.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    writer = _ShardWriter(out, tag, shard_size)
    try:
        entries = [writer.add(number, sample) for number, sample in enumerate(samples)]
        writer.close()
    except BaseException:
        writer.abort()  # this pack's shards are in no index: removed, the previous pack stays whole
        raise
    index = {"format": FORMAT, "version": VERSION, "options": options, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "shards": writer.shards, "samples": entries}
    atomic_write_text(out / INDEX_NAME, json.dumps(index, indent=1))
    for name in old:  # the pack replaced: only now that the new one is whole
        (out / name).unlink(missing_ok=True)
    total = sum(s["bytes"] for s in writer.shards)
    log.info("packed %d samples into %d shard(s), %d bytes, in %s", len(samples), len(writer.shards), total, out)
    return PackSummary(out, len(samples), len(writer.shards), total)


def _previous_pack(out: Path, options: dict, *, overwrite: bool) -> list[str]:
    """The shard names of the pack already in ``out`` (removed once the new one is written), after
    checking that it may be replaced: the same data and options (a re-run), or ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the shards and {INDEX_NAME}")
    if not out.exists() or not any(out.iterdir()):
        return []
    if not (out / INDEX_NAME).is_file():
        raise ConfigError(f"--out {out} is not empty and holds no pack; give a new or empty folder")
    try:
        index = read_index(out)
    except DataError:
        if not overwrite:
            raise ConfigError(f"--out {out} holds a damaged pack; pass --overwrite to replace it") from None
        return [p.name for p in out.glob("shard-*.tar")]
    if index.get("options") != options and not overwrite:
        before = index.get("options", {})
        raise ConfigError(f"--out {out} holds another pack ({len(index['samples'])} samples of {before.get('source')}, "
                          f"shard size {before.get('shard_size')}); pass --overwrite to replace it, or another --out")
    return [s["name"] for s in index["shards"]]


class _ShardWriter:
    """Samples appended to the current shard; a new shard starts when the next sample would pass the size."""

    def __init__(self, out: Path, tag: str, shard_size: int) -> None:
        self.out, self.tag, self.shard_size = out, tag, shard_size
        self.shards: list[dict] = []  # committed: name, bytes, mtime_ns, samples
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._count = 0

    def add(self, number: int, sample: Sample) -> dict:
        key = f"{number:08d}"
        files = [sample.video.path] if sample.video is not None else [f.path for f in sample.frames]
        sizes = [_size(sample, p) for p in files]
        if self._tar is not None and self._count and self._tar.offset + sum(sizes) > self.shard_size:
            self._commit()
        if self._tar is None:
            self._open()
        suffixes = [Path(p).suffix.lower() for p in files]
        names = [f"{key}{suffixes[0]}"] if sample.video is not None else [f"{key}.{n}{x}" for n, x in enumerate(suffixes)]
        members = [self._add_file(name, path, sample) for name, path in zip(names, files)]
        entry = {"key": key, "id": sample.id, "shard": len(self.shards), "members": members, **_annotations(sample)}
        meta = json.dumps({k: v for k, v in entry.items() if k not in ("shard", "members")}).encode()
        self._add_bytes(f"{key}.json", meta)
        self._count += 1
        return entry

    def close(self) -> None:
        if self._tar is not None:
            self._commit()

    def abort(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tmp.unlink(missing_ok=True)
        for shard in self.shards:
            (self.out / shard["name"]).unlink(missing_ok=True)

    def _open(self) -> None:
        self._tmp = self.out / f".shard-{self.tag}-{len(self.shards):05d}.tar.tmp"
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.PAX_FORMAT)
        self._count = 0

    def _add_file(self, name: str, path: Path, sample: Sample) -> dict:
        digest = hashlib.sha256()
        info = tarfile.TarInfo(name)
        info.size = _size(sample, path)
        with open_file(path) if url_of(path) is not None else open(path, "rb") as fh:  # a URL: streamed, ranged reads
            self._tar.addfile(info, _Hashing(fh, digest))
        # the data ends where the tar now is, less the padding to a 512-byte block
        offset = self._tar.offset - -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        return {"name": name, "offset": offset, "size": info.size, "sha256": digest.hexdigest()}

    def _add_bytes(self, name: str, data: bytes) -> None:
        import io

        info = tarfile.TarInfo(name)
        info.size = len(data)
        self._tar.addfile(info, io.BytesIO(data))

    def _commit(self) -> None:
        self._tar.close()
        name = f"shard-{self.tag}-{len(self.shards):05d}.tar"
        final = self.out / name
        self._tmp.replace(final)
        st = final.stat()
        self.shards.append({"name": name, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "samples": self._count})
        self._tar, self._tmp = None, None


class _Hashing:
    """A file read by tarfile, hashed on the way (one read of each image)."""

    def __init__(self, fh, digest) -> None:
        self.fh, self.digest = fh, digest

    def read(self, n: int = -1) -> bytes:
        block = self.fh.read(n)
        self.digest.update(block)
        return block


def _size(sample: Sample, path: Path) -> int:
    if url_of(path) is not None:  # the object's size from the store
        try:
            return version(path)[0]
        except BadFileError as exc:
            raise DataError(f"sample {sample.id!r}: {exc}; it cannot be packed") from None
    try:
        return Path(path).stat().st_size
    except OSError as exc:
        raise DataError(f"sample {sample.id!r}: {path} cannot be packed ({exc.strerror or exc}); fix or remove it") from None


def _annotations(sample: Sample) -> dict:
    """What the index and the sample's JSON record besides its members (fields that are set only)."""
    fields = {"label": sample.label, "labels": sample.labels, "targets": sample.targets, "group": sample.group,
              "split": sample.split, "frame_labels": sample.frame_labels, "frame_targets": sample.frame_targets}
    out = {k: v for k, v in fields.items() if v is not None}
    if sample.video is not None:
        out["video"] = {"start": sample.video.start, "end": sample.video.end}
    return out
