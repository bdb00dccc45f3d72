"""Training batches streamed from packed data: every sample exactly once per epoch over processes x workers.

Each epoch the shards are shuffled (the same order on every process: it is seeded by the seed and the
epoch), and their samples, shard after shard, are cut into one contiguous range per process (rank): sizes
differ by one sample at most. Each range is cut into the same number of batches on every process (DDP
steps together: a process with a batch fewer would wait forever for the others), so a few batches are
one or more samples short of ``batch_size``, never padded with a sample read twice. The batches of a
process are dealt to its DataLoader workers as contiguous runs, so each worker reads its own shards (or
part of one), front to back. A worker passes its samples through a shuffle buffer (a window of
``buffer`` samples drawn from at random, as WebDataset does) before they fill its batches.

Uneven shard counts never drop or repeat samples: the cut is at the sample level, so a shard may be
shared by two processes or two workers, each reading its own part of it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from seqvision.data.dataset import SequenceDataset, collate
from seqvision.data.packs import SHUFFLE_BUFFER, shard_name
from seqvision.errors import DataError


@dataclass(frozen=True)
class Plan:
    """One worker's share of an epoch: its samples in reading order, and the sizes of its batches."""

    samples: list[int]  # indices into the dataset, shard by shard
    batch_sizes: list[int]  # sum(batch_sizes) == len(samples)


def epoch_order(shards: list[str], *, epoch: int, seed: int, shuffle: bool) -> list[int]:
    """The dataset's indices shard by shard, the shards in this epoch's order (the first-seen order of
    ``shards``, each sample's shard, when not shuffled); within a shard, the packing order."""
    by_shard: dict[str, list[int]] = {}
    for i, shard in enumerate(shards):
        by_shard.setdefault(shard, []).append(i)
    names = list(by_shard)
    if shuffle:
        random.Random(seed * 1_000_003 + epoch).shuffle(names)
    return [i for name in names for i in by_shard[name]]


def steps_per_epoch(total: int, *, world: int, batch_size: int) -> int:
    """Batches each process gets per epoch (the same on every process), or a :class:`DataError` saying what
    to change when ``total`` samples cannot give every process that many batches of 1 to ``batch_size``
    samples, each sample once: when ``total < world``, or with batch size 1 when ``total`` is not a multiple
    of ``world`` (equal steps of one sample each read ``world`` x steps samples)."""
    most = -(-total // world)
    steps = -(-most // batch_size)
    if total // world >= steps:
        return steps
    if total < world:
        raise DataError(f"{total} training samples over {world} processes: some process would get none; "
                        f"train on at most {total} processes, or on more data")
    fewer, more = total - total % world, total - total % world + world  # batch size 1 and a remainder
    raise DataError(f"{total} training samples over {world} processes with --batch-size 1: every process takes the same "
                    f"number of steps, so {total % world} sample(s) would be left over or some process would take a step "
                    f"with no sample; use --batch-size 2 or more, or a training split of {fewer} or {more} samples "
                    f"(a multiple of {world})")


def plan(order: list[int], *, rank: int, world: int, worker: int, workers: int, batch_size: int) -> Plan:
    """Worker ``worker`` of process ``rank``: its contiguous part of ``order`` and its batch sizes.

    Every index of ``order`` is in exactly one (rank, worker) plan; every process has the same number of
    batches (:func:`steps_per_epoch`), each of at least one and at most ``batch_size`` samples."""
    total = len(order)
    steps = steps_per_epoch(total, world=world, batch_size=batch_size)
    start = rank * (total // world) + min(rank, total % world)
    count = total // world + (rank < total % world)
    sizes = []  # as full as possible, yet leaving at least one sample for each batch still to come
    left = count
    for step in range(steps):
        sizes.append(min(batch_size, left - (steps - step - 1)))
        left -= sizes[-1]
    first, last = worker * steps // workers, (worker + 1) * steps // workers  # its run of the process's batches
    skip = sum(sizes[:first])
    mine = sizes[first:last]
    return Plan(order[start + skip : start + skip + sum(mine)], mine)


def shuffle_buffer(items: list[int], size: int, rng: random.Random):
    """``items`` in the order a buffer of ``size`` draws them: each drawn at random from the next ``size``
    not yet drawn (size 1: in order). Every item exactly once."""
    buffer: list[int] = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            yield buffer.pop(rng.randrange(len(buffer)))
    while buffer:
        yield buffer.pop(rng.randrange(len(buffer)))


class ShardStream(IterableDataset):
    """Collated training batches of ``base`` (a :class:`SequenceDataset` of packed samples), planned by
    :func:`plan` for this process (``rank`` of ``world``) and the DataLoader worker that iterates it.

    Use with :class:`StreamLoader` (or ``DataLoader(stream, batch_size=None)``); ``len()`` is this process's
    batches per epoch. Each iteration is the next epoch: with persistent workers, every worker's copy counts
    epochs alike."""

    def __init__(self, base: SequenceDataset, *, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 shuffle: bool = True, buffer: int = SHUFFLE_BUFFER, epoch: int = 0) -> None:
        self.base = base
        self.shards = [shard_name(s) for s in base.samples]
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.shuffle, self.buffer = shuffle, max(1, buffer)
        self.epoch = epoch  # the next iteration's epoch (a resumed run starts at its own)
        steps_per_epoch(len(self.shards), world=world, batch_size=batch_size)  # refuse now, not in a worker

    def __len__(self) -> int:
        return steps_per_epoch(len(self.shards), world=self.world, batch_size=self.batch_size)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, self.epoch = self.epoch, self.epoch + 1
        order = epoch_order(self.shards, epoch=epoch, seed=self.seed, shuffle=self.shuffle)
        share = plan(order, rank=self.rank, world=self.world, worker=worker, workers=workers, batch_size=self.batch_size)
        rng = random.Random(f"{self.seed}/{epoch}/{self.rank}/{worker}")  # a str seed: the same in every process
        drawn = shuffle_buffer(share.samples, self.buffer if self.shuffle else 1, rng)
        for size in share.batch_sizes:
            yield collate([self.base[next(drawn)] for _ in range(size)])


class _Deferred:
    """An iterator that calls ``start`` for the real one at its first ``next``, not when it is made."""

    def __init__(self, start: Callable[[], Iterator]) -> None:
        self._start, self._it = start, None

    def __iter__(self) -> "_Deferred":
        return self

    def __next__(self):
        if self._it is None:
            self._it = self._start()
        return next(self._it)


class StreamLoader(DataLoader):
    """The DataLoader of a :class:`ShardStream` whose passes each start at their first batch, as the epoch
    ``epoch()`` then says (None: the epochs count on from the stream's).

    Lightning calls ``iter()`` on the train loader when it builds it, before a resumed run has restored its
    epoch from the checkpoint; the workers would then have started on epoch 0's order. Deferred to the first
    batch, the pass (and the workers it starts, which take a copy of the stream) knows the trainer's epoch.
    Persistent workers count epochs on by themselves; asked for another epoch, new workers are started."""

    def __init__(self, stream: ShardStream, *, num_workers: int, epoch: Callable[[], int] | None = None) -> None:
        super().__init__(stream, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0)
        self._epoch = epoch
        self._workers_next: int | None = None  # the epoch that the running persistent workers read next

    def __iter__(self) -> Iterator:
        return _Deferred(self._start)

    def _start(self) -> Iterator:
        stream: ShardStream = self.dataset
        epoch = self._epoch() if self._epoch is not None else None
        if self.num_workers > 0 and self._iterator is not None:
            if epoch is not None and epoch != self._workers_next:  # its copies would read another epoch
                self._iterator._shutdown_workers()
                self._iterator = None
            elif epoch is None:
                epoch = self._workers_next
        if epoch is not None:
            stream.epoch = epoch  # read when the pass starts (no workers) or copied into new workers
        self._workers_next = stream.epoch + 1
        return super().__iter__()


def stream_loader(base: SequenceDataset, *, batch_size: int, seed: int, num_workers: int,
                  epoch: Callable[[], int] | None = None, buffer: int = SHUFFLE_BUFFER) -> StreamLoader:
    """The training DataLoader of packed data: a :class:`ShardStream` for this process (the rank and world
    size of ``torch.distributed`` when it is initialised, as under torchrun); each pass reads the epoch that
    ``epoch()`` says at its first batch (a trainer's current epoch), or 0, 1, 2, ... when None. Each worker
    draws its samples through a shuffle buffer of ``buffer`` samples (1: the packing order)."""
    import warnings

    import torch.distributed as dist

    # Lightning warns that a length with several workers "could be inaccurate" (duplicated data): each
    # worker here reads only its own plan, and the length is exactly the batches of this process
    warnings.filterwarnings("ignore", message=r".*`IterableDataset` has `__len__` defined.*")

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    stream = ShardStream(base, batch_size=batch_size, seed=seed, rank=rank, world=world, buffer=buffer)
    return StreamLoader(stream, num_workers=num_workers, epoch=epoch)
