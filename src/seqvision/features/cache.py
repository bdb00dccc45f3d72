"""The on-disk feature cache: one vector per image file, under a key that changes when anything that
changes the vector changes.

Layout (documented in the README, readable with numpy alone)::

    CACHE_ROOT/<key>/meta.json                  what the key stands for: backbone, weights fingerprint,
                                                preprocessing, pooling, storage dtype, feature size
    CACHE_ROOT/<key>/shard-<id>.npy             (M, F) float16/float32 features, one row per image
    CACHE_ROOT/<key>/shard-<id>.json            the commit record: the M image identities, in row order,
                                                and the sha256 of the .npy file
    CACHE_ROOT/.runtimes/                       ONNX files of encoders and the runtime ``auto`` chose on
                                                this machine (:mod:`seqvision.features.runtimes`)

``<key>`` is a hash of the meta: another backbone, other weights, other preprocessing, another compute
precision or inference runtime use another folder. An image's identity is its absolute path, size and modification time (or, with
``content_hash=True``, the sha256 of its bytes): a changed file simply misses. Shards are written to a
temporary name and renamed, the .npy before its .json, so a crash leaves at most an uncommitted .npy
that is ignored; a shard whose checksum does not match is reported and its images are recomputed.
Sampling settings are not part of the key: the cache holds every image file of a sample, and each
sampling policy reads the rows it needs. A video frame's identity is its video's identity plus the
frame's time (``video_frame_identity``); a video's rows are the frames its sampling can pick.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from seqvision.data.packs import member_of
from seqvision.data.remote import content_identity, url_of
from seqvision.data.transforms import Preprocessing
from seqvision.errors import BadFileError, ConfigError
from seqvision.io import atomic_write_synced, atomic_write_text, tensor_digest

SHARD_ROWS = 4096  # rows buffered before a shard is committed: bounded memory for any dataset size
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504: anything larger is stored as inf
FLOAT16_TINY = float(np.finfo(np.float16).tiny)  # 2**-14: below it float16 keeps fewer than its 11 bits
# A float16 cache falls back to float32 when more than this share of the nonzero values is below
# FLOAT16_TINY (the few near-zero values of real ReLU maps lose nothing that matters; a net whose whole
# output is that small, e.g. randomly initialised MobileNetV2 maps of ~1e-9, would be stored as zeros).
FLOAT16_UNDERFLOW_SHARE = 0.01

log = logging.getLogger("seqvision")


def default_cache_root() -> Path:
    """``$SEQVISION_CACHE``, else ``$XDG_CACHE_HOME/seqvision/features``, else ``~/.cache/seqvision/features``."""
    if os.environ.get("SEQVISION_CACHE"):
        return Path(os.environ["SEQVISION_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "seqvision" / "features"


def weights_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (names, shapes, dtypes and bytes) of ``module``."""
    return tensor_digest(module.state_dict())


def video_frame_identity(video_identity: str, time: float) -> str:
    """The identity of the frame on screen at ``time`` seconds of the video whose file identity is given."""
    return f"{video_identity}@{time:.6f}s"


def file_identity(path: Path, *, content_hash: bool = False) -> str:
    """What makes a cached row valid for ``path``: path + size + mtime, or the content's sha256. A shard
    member (packed data) is always known by its content: the same bytes read from their folder with
    ``content_hash`` find the same rows, and a repacked pack's new paths do not lose them. So is an object
    named by URL (it has no modification time we could trust, and S3's and a local copy's bytes agree)."""
    member = member_of(path)  # first: a member of a pack given by URL is a URL too, known by the index's digest
    if member is not None:
        return member.identity()
    if url_of(path) is not None:
        return content_identity(path)
    path = Path(path).resolve()
    if content_hash:
        return "sha256:" + _sha256_file(path)  # streamed: a long video is never read into memory whole
    st = path.stat()
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheKey:
    backbone: str
    weights: str  # fingerprint of the encoder's parameters and buffers
    preprocessing: dict
    pool: str
    dtype: str  # float16 | float32 storage
    compute: str  # float32 | bfloat16 | float16: the precision the CNN ran in (bf16 features differ slightly)
    # the inference runtime that ran the CNN, with its version ("onnxruntime 1.32.0"): another runtime's
    # features agree with torch's to rounding only (~4e-6 relative), so their vectors are kept apart
    runtime: str = "torch"

    def to_dict(self) -> dict:
        out = {
            "backbone": self.backbone, "weights": self.weights, "preprocessing": self.preprocessing,
            "pool": self.pool, "dtype": self.dtype, "compute": self.compute,
        }
        if self.runtime != "torch":  # torch's keys hash as before the field existed: every earlier cache is found
            out["runtime"] = self.runtime
        return out

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:20]

    @classmethod
    def for_encoder(
        cls, encoder, prep: Preprocessing, *, dtype: str = "float32", compute: torch.dtype = torch.float32, runtime: str = "torch",
    ) -> "CacheKey":
        """The key of ``encoder``'s features with ``prep``, stored as ``dtype``, computed in ``compute`` by
        ``runtime`` (a :attr:`~seqvision.features.runtimes.Runtime.label`)."""
        if dtype not in ("float16", "float32"):
            raise ValueError(f"cache dtype must be float16 or float32, got {dtype!r}")
        compute_name = str(compute).removeprefix("torch.")
        from seqvision.models.backbones import network_name

        return cls(network_name(encoder), weights_fingerprint(encoder), prep.to_dict(), encoder.pool, dtype, compute_name, runtime)


def float16_loss(array: np.ndarray) -> str | None:
    """What storing ``array`` as float16 would lose, in words, or None when it fits: any finite value
    beyond float16's range (it would become inf), or more than :data:`FLOAT16_UNDERFLOW_SHARE` of the
    nonzero values below its smallest normal number (they would lose most of their digits, or become 0)."""
    magnitude = np.abs(array[np.isfinite(array)])
    if magnitude.size and magnitude.max() > FLOAT16_MAX:
        return f"values up to {magnitude.max():.3g}, beyond float16's largest ({FLOAT16_MAX:g}), would become inf"
    nonzero = magnitude[magnitude > 0]
    tiny = int((nonzero < FLOAT16_TINY).sum())
    if nonzero.size and tiny > FLOAT16_UNDERFLOW_SHARE * nonzero.size:
        return (f"{tiny / nonzero.size:.0%} of the nonzero values (median {np.median(nonzero):.3g}) are below float16's "
                f"smallest normal number ({FLOAT16_TINY:.3g}) and would lose their precision or become 0")
    return None


def storage_dtype(root: Path, key: CacheKey) -> str:
    """What the rows under ``key`` in ``root`` are stored in: the key's dtype, or float32 where a float16
    cache fell back (see :class:`FeatureStore`). Reads the meta only; creates nothing."""
    return _read_meta(Path(root) / key.digest / "meta.json")[0].get("stored", key.dtype)


class FeatureStore:
    """The cached features of one key: lookup by image identity, append in committed shards.

    A float16 key stores its rows as float32 instead, from the first batch that float16 cannot hold
    (:func:`float16_loss`), said in one line and recorded as ``"stored": "float32"`` in ``meta.json``: the
    key still names the folder (the rows are the same features, read back as float32 either way), and
    :attr:`dtype` is what new shards are written in."""

    def __init__(self, root: Path, key: CacheKey, *, content_hash: bool = False, shard_rows: int = SHARD_ROWS) -> None:
        self.dir = Path(root) / key.digest
        self.key = key
        self.content_hash = content_hash
        self.shard_rows = shard_rows  # rows per committed shard: what a crash can lose, and the RAM buffer
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "meta.json"
        if not meta.exists():
            atomic_write_text(meta, json.dumps(key.to_dict(), indent=1, sort_keys=True))
        # storage of new rows: the key's, or float32 once float16 could not hold them (recorded in the meta)
        self.dtype: str = storage_dtype(root, key)
        self.index: dict[str, tuple[str, int]] = {}  # identity -> (shard name, row)
        self._content_rows = False  # whether any row is keyed by a content hash (extract --content-hash)
        self._video_files: set[str] = set()  # identities of the video files whose frames have rows
        self.corrupt: list[str] = []  # shards found damaged (reported, their rows recomputed)
        self._arrays: dict[str, np.ndarray] = {}
        self._verified: set[str] = set()
        self._pending: list[tuple[str, np.ndarray]] = []
        self._load_index()

    # -- reading ----------------------------------------------------------------------------------
    def _load_index(self) -> None:
        for record in sorted(self.dir.glob("shard-*.json")):
            try:
                entry = json.loads(record.read_text())
                identities = entry["identities"]
                npy = record.with_suffix(".npy")
                if not npy.exists():
                    raise ValueError("its .npy file is missing")
            except (ValueError, KeyError, OSError) as exc:
                self._quarantine(record.stem, f"unreadable commit record ({exc})")
                continue
            for row, identity in enumerate(identities):
                self._add(identity, (record.stem, row))

    def refresh(self) -> None:
        """Index the shards other processes have committed since this store was opened."""
        self._load_index()

    def _quarantine(self, shard: str, reason: str) -> None:
        """Move a damaged shard aside (never read again) and remember it for the report."""
        self.corrupt.append(f"{self.dir / shard}: {reason}; its images will be recomputed")
        warnings.warn(f"feature cache: shard {self.dir / shard} is damaged ({reason}); recomputing its images", stacklevel=3)
        for suffix in (".json", ".npy"):
            path = (self.dir / shard).with_suffix(suffix)
            if path.exists():
                path.replace(path.with_name(path.name + ".corrupt"))
        self.index = {k: v for k, v in self.index.items() if v[0] != shard}
        self._arrays.pop(shard, None)

    def _array(self, shard: str) -> np.ndarray | None:
        if shard not in self._arrays:
            npy = (self.dir / shard).with_suffix(".npy")
            try:
                expected = json.loads(npy.with_suffix(".json").read_text())["sha256"]
                if shard not in self._verified and _sha256_file(npy) != expected:
                    raise ValueError("checksum mismatch")
                self._verified.add(shard)
                self._arrays[shard] = np.load(npy, mmap_mode="r")  # memory-mapped: pages load on use
            except (ValueError, KeyError, OSError) as exc:
                self._quarantine(shard, str(exc))
                return None
        return self._arrays[shard]

    def identity(self, path: Path, *, video: bool = False) -> str:
        """The identity ``path``'s rows are kept under (``video``: a video file, whose frames have the rows).

        The store's own kind (path + size + mtime, or the content hash), unless the cache was filled the
        other way (``extract --content-hash``) and holds the file under its content hash: a cache is found
        whichever way it was filled. The content is hashed only for files the own kind does not find."""
        own = file_identity(path, content_hash=self.content_hash)
        if self.content_hash or not self._content_rows or self._holds(own, video):
            return own
        content = file_identity(path, content_hash=True)
        return content if self._holds(content, video) else own

    def _holds(self, identity: str, video: bool) -> bool:
        return identity in (self._video_files if video else self.index)

    def missing(self, paths: Iterable[Path]) -> dict[Path, str]:
        """``{path: identity}`` (deduplicated, in order) of the paths with no committed row; the
        identities are the ones to commit their rows under, so no file is examined twice."""
        out: dict[Path, str] = {}
        for path in paths:
            if path not in out:
                try:
                    identity = self.identity(path)
                except BadFileError:  # a packed image whose shard is cut or gone: loading it reports the sample
                    identity = ""
                if identity not in self.index:
                    out[path] = identity
        return out

    def locate(self, paths: list[Path]) -> list[tuple[str, int] | None]:
        """Where each path's row is (``None`` when not cached); resolve once, read every epoch."""
        out = []
        for path in paths:
            try:
                out.append(self.index.get(self.identity(path)))
            except (OSError, BadFileError):  # the file (or its shard) is gone: nothing valid can be cached for it
                out.append(None)
        return out

    def read(self, locations: list[tuple[str, int]]) -> torch.Tensor | None:
        """``(T, F)`` float32 rows at ``locations``; ``None`` if a shard turned out damaged.

        One fancy-indexed read per shard (a sample's rows usually sit in one shard), not one per row:
        this runs for every sample of every cached epoch.
        """
        by_shard: dict[str, tuple[list[int], list[int]]] = {}  # shard -> (positions in the output, rows)
        for position, (shard, row) in enumerate(locations):
            positions, rows = by_shard.setdefault(shard, ([], []))
            positions.append(position)
            rows.append(row)
        out: np.ndarray | None = None
        for shard, (positions, rows) in by_shard.items():
            array = self._array(shard)
            if array is None:
                return None
            if out is None:
                out = np.empty((len(locations), *array.shape[1:]), dtype=np.float32)
            out[positions] = np.asarray(array)[rows]  # (n, F) gathered from the memory map, as float32
        return torch.from_numpy(out if out is not None else np.empty((0, 0), dtype=np.float32))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_arrays"] = {}  # memory maps are reopened in each DataLoader worker, not copied
        return state

    # -- writing ----------------------------------------------------------------------------------
    def add(self, identities: list[str], features: torch.Tensor) -> None:
        """Buffer rows; a shard is committed every ``shard_rows`` rows (and on :meth:`flush`)."""
        array = features.detach().float().cpu().numpy()  # (n, F)
        if self.dtype == "float16":
            loss = float16_loss(array)
            if loss is not None:
                self.dtype = "float32"
                log.warning("feature cache %s: stored as float32, not float16: %s", self.dir, loss)
                atomic_write_text(self.dir / "meta.json", json.dumps({**self.key.to_dict(), "stored": "float32"}, indent=1, sort_keys=True))
        array = array.astype(self.dtype)
        self._pending.extend(zip(identities, array))
        while len(self._pending) >= self.shard_rows:
            self._commit(self._pending[: self.shard_rows])
            self._pending = self._pending[self.shard_rows :]

    def flush(self) -> None:
        if self._pending:
            self._commit(self._pending)
            self._pending = []

    def _commit(self, rows: list[tuple[str, np.ndarray]]) -> None:
        name = f"shard-{uuid.uuid4().hex[:16]}"
        npy = self.dir / f"{name}.npy"
        atomic_write_synced(npy, lambda fh: np.save(fh, np.stack([r for _, r in rows])))
        identities = [i for i, _ in rows]
        atomic_write_text(npy.with_suffix(".json"), json.dumps({"identities": identities, "sha256": _sha256_file(npy)}))
        self._verified.add(name)  # its checksum was just taken from the file as written
        for row, identity in enumerate(identities):
            self._add(identity, (name, row))

    def _add(self, identity: str, location: tuple[str, int]) -> None:
        self.index[identity] = location
        self._content_rows = self._content_rows or identity.startswith("sha256:")
        video, at, _ = identity.rpartition("@")
        if at:  # a video frame: remember its file's identity
            self._video_files.add(video)



def cache_info(root: Path | None = None) -> list[dict]:
    """One dict per key folder: its key, entries (images), shards, bytes."""
    root = Path(root or default_cache_root())
    out = []
    if not root.is_dir():
        return out
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):  # .runtimes: not a key
        meta, note = _read_meta(folder / "meta.json")
        entries = 0
        for record in folder.glob("shard-*.json"):
            try:
                entries += len(json.loads(record.read_text())["identities"])
            except (ValueError, KeyError, OSError):
                pass
        out.append({
            "key": folder.name,
            "backbone": meta.get("backbone"),
            "weights": (meta.get("weights") or "")[:12],
            "preprocessing": meta.get("preprocessing"),
            "pool": meta.get("pool"),
            "dtype": meta.get("stored", meta.get("dtype")),  # float32 where a float16 cache fell back
            "compute": meta.get("compute"),
            "runtime": meta.get("runtime", "torch"),
            "entries": entries,
            "shards": len(list(folder.glob("shard-*.json"))),
            "bytes": sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
            "note": note,
        })
    return out


def _read_meta(path: Path) -> tuple[dict, str | None]:
    """A key folder's ``meta.json``, or ``{}`` and what is wrong with it (shown, not raised: one damaged
    entry must not hide the rest of the cache)."""
    if not path.exists():
        return {}, "no meta.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {}, f"meta.json unreadable ({type(exc).__name__}); `seqvision cache clear --key` removes the entry"
    if not isinstance(meta, dict):
        return {}, "meta.json damaged (not an object); `seqvision cache clear --key` removes the entry"
    return meta, None


def cache_clear(root: Path | None = None, key: str | None = None) -> int:
    """Remove every key folder (or one; without ``key`` also ``.runtimes``: the ONNX files and the
    remembered runtime choices); returns the number of bytes freed. An unknown ``key`` is a
    :class:`ConfigError` naming the keys there are."""
    import shutil

    root = Path(root or default_cache_root())
    entries = cache_info(root)
    if key is not None and key not in [e["key"] for e in entries]:
        raise ConfigError(f"cache clear --key {key}: no such key in {root} (keys: {', '.join(e['key'] for e in entries) or 'none'})")
    freed = 0
    for entry in entries:
        if key is None or entry["key"] == key:
            freed += entry["bytes"]
            shutil.rmtree(root / entry["key"])
    runtimes = root / ".runtimes"
    if key is None and runtimes.is_dir():
        freed += sum(p.stat().st_size for p in runtimes.rglob("*") if p.is_file())
        shutil.rmtree(runtimes)
    return freed
