"""Sharing one extraction between processes: each process of a launch (torchrun, Lightning) takes its
share of the images, marks what it committed, and waits for its peers (or finishes their share when they
stall), so every process ends with the whole cache."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("seqvision")


def launch_rank() -> tuple[int, int]:
    """``(local rank, local world size)`` of a torchrun-style launch (``LOCAL_RANK`` and
    ``LOCAL_WORLD_SIZE`` set, as torchrun does), else ``(0, 1)``.

    Per node, because the default cache folder is each node's own: on several nodes each node fills
    its cache once. Lightning's own launcher sets ``LOCAL_RANK`` but not ``LOCAL_WORLD_SIZE`` in the
    processes it starts, after the first one has filled the cache alone: they find every row cached."""
    try:
        return int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    except (KeyError, ValueError):
        return 0, 1


def launch_token(world: int) -> str:
    """The same in every process of one launch on one node, and different in the next launch: the
    processes torchrun starts share its agent as their parent process, and each launch has a new agent."""
    parts = [os.environ.get(k, "") for k in ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "MASTER_ADDR", "MASTER_PORT")]
    return "rank-" + hashlib.sha256("|".join([*parts, str(os.getppid()), str(world)]).encode()).hexdigest()[:16]


def remove_stale_marks(folder: Path, max_age: float = 86400.0) -> None:
    for mark in [*folder.glob(".rank-*.done"), *folder.glob(".rank-*.working")]:
        try:
            if time.time() - mark.stat().st_mtime > max_age:
                mark.unlink()
        except OSError:
            pass  # another process removed it first


def wait_for_peers(folder: Path, token: str, world: int, stall_timeout: float, rank: int, poll: float = 0.5) -> int:
    """Until every process's ``.done`` mark exists. Progress restarts the clock: a new mark, a committed
    shard, or a peer's ``.working`` mark touched (after every batch it computes). Returns the number of
    rows the other processes say they computed."""

    def progress() -> tuple:
        done = sum((folder / f".{token}-{r}.done").exists() for r in range(world))
        beats = []
        for r in range(world):
            try:
                beats.append((folder / f".{token}-{r}.working").stat().st_mtime_ns)
            except OSError:
                beats.append(0)
        return done, len(list(folder.glob("shard-*.json"))), tuple(beats)

    seen, since = progress(), time.monotonic()
    while seen[0] < world:
        time.sleep(poll)
        now = progress()
        if now != seen:
            seen, since = now, time.monotonic()
        elif time.monotonic() - since > stall_timeout:
            log.warning(
                "feature cache: %d of %d processes have not finished their share and show no progress for %.0f s; "
                "computing the rest in this process", world - seen[0], world, stall_timeout,
            )
            break
    total = 0
    for r in range(world):
        try:
            total += int((folder / f".{token}-{r}.done").read_text()) if r != rank else 0
        except (OSError, ValueError):
            pass  # a peer that never finished
    return total
