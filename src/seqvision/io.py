"""Atomic file writes: a crash never leaves a half-written file where a good one was."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from seqvision.errors import StorageError, first_line


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp makes the file 0600: give it the mode open() would have (0666 less the umask), so that a
        # run folder or a pack served or shared as another user is readable as its other files are
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
            raise StorageError(
                f"cannot write {path} ({os.strerror(exc.errno)}); the previous version of the file, if any, "
                "is intact. Free space (or fix permissions) and run the command again"
            ) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``os.umask`` can only be read by
    setting it, which races with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_synced(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """:func:`atomic_write` through an open binary file, fsynced before the rename, so the file that
    replaces the old one is whole on disk (checkpoints, cache shards)."""

    def run(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(path, run)


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, shapes, dtypes and bytes of a dict of tensors (a state_dict)."""
    digest = hashlib.sha256()
    for name, tensor in _tensor_items(tensors):
        _hash_tensor(digest, name, tensor)
    return digest.hexdigest()


class IncrementalTensorDigest:
    """:func:`tensor_digest` (the same value) that skips re-hashing tensors the caller vouches for.

    A checkpoint hashes its weights on every save, and a frozen backbone's are most of them (45 MB
    for ResNet-18) although they never change. Only names in
    ``stable`` are trusted, and only while they are the very same tensor as at the previous call: same
    storage (kept alive here, so its address cannot be reused), layout and version counter. The
    version counter alone is not enough: a fused optimizer step or a BatchNorm running-statistics
    update changes a tensor without bumping it, hence ``stable`` (the caller's frozen tensors). Nor
    do writes through ``.data`` or a numpy view: a caller must not name tensors it changes that way
    (a stale digest would make the checkpoint fail its check at load time).
    sha256 is sequential, so the reused part is the longest unchanged prefix in name order; after the
    first changed tensor everything is hashed again.
    """

    def __init__(self) -> None:
        self._keys: list[tuple] = []  # per hashed tensor, in name order: what identifies it
        self._states: list = []  # the sha256 state right after that tensor
        self._alive: list[torch.Tensor] = []  # keeps the storages, so a key's address stays theirs

    def __call__(self, tensors: dict[str, torch.Tensor], stable: frozenset[str] | set[str] = frozenset()) -> str:
        items = _tensor_items(tensors)
        digest = hashlib.sha256()
        keys, states = [], []
        reusing = True
        for i, (name, t) in enumerate(items):
            key = (name, t.device, t.dtype, tuple(t.shape), t.stride(), t.storage_offset(),
                   t.untyped_storage().data_ptr(), t._version)
            if reusing and name in stable and i < len(self._keys) and self._keys[i] == key:
                digest = self._states[i].copy()
            else:
                reusing = False
                _hash_tensor(digest, name, t)
            keys.append(key)
            states.append(digest.copy())
        self._keys, self._states, self._alive = keys, states, [t for _, t in items]
        return digest.hexdigest()


def _tensor_items(tensors: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    return [(name, t) for name, t in sorted(tensors.items()) if isinstance(t, torch.Tensor)]


def _hash_tensor(digest, name: str, tensor: torch.Tensor) -> None:
    t = tensor.detach().cpu().contiguous()
    digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
    # the array's buffer, not a bytes copy of it: half the time for a 45 MB ResNet-18; the same digest
    digest.update(t.view(-1).view(torch.uint8).numpy() if t.numel() else b"")


def safe_load(path: Path, error: type[Exception], what: str, fix: str) -> Any:
    """``torch.load`` with ``weights_only=True`` (a pickle that would run code is refused), on the CPU.
    A missing or unloadable file raises ``error`` as one line: ``{what} {path} ...; {fix}``."""
    if not Path(path).is_file():
        raise error(f"{what} {path} does not exist; {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle: corrupt, truncated or unsafe
        raise error(
            f"{what} {path} cannot be loaded safely ({first_line(exc)}): it is corrupt, truncated, or holds objects "
            f"other than tensors and plain data; {fix}"
        ) from None
