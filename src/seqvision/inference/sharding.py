"""Inference over several processes (``torchrun --nproc-per-node N -m seqvision predict|evaluate|report``):
each process predicts every N-th sample, and the outputs are gathered back into the samples' own order on
every process, so metrics and diagnostics are computed exactly as in one process. Only rank 0 writes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from seqvision.data.samples import Sample
from seqvision.errors import DataError

if TYPE_CHECKING:
    from seqvision.inference.predictor import Predictions

log = logging.getLogger("seqvision")


def sharded(run: Callable[[list[Sample]], "Predictions"], samples: list[Sample], rank: int, world: int) -> "Predictions":
    """``run`` on this process's share (samples ``rank``, ``rank + world``, ...), then every share gathered:
    the :class:`Predictions` of all ``samples`` in their order, on every process."""
    import torch.distributed as dist

    _ids_once(samples)  # before any work: every process sees the same samples, so all raise alike
    mine = list(range(rank, len(samples), world))
    log.info("rank %d of %d: predicting %d of the %d samples", rank, world, len(mine), len(samples))
    local = run([samples[i] for i in mine])
    parts: list = [None] * world
    dist.all_gather_object(parts, (mine, local))
    return merge(parts, samples)


def merge(parts: list[tuple[list[int], "Predictions"]], samples: list[Sample]) -> "Predictions":
    """Shares ``(sample indices, their Predictions)`` -> one Predictions in the order of ``samples``. Each
    sample must come from exactly one share (no duplicates, no losses), and each share's rows must be its
    samples' rows, every one used: a row left over, or a sample with no rows that its process did not
    leave out (``--on-bad-image skip``), is refused naming the process (its rank) and the samples."""
    from seqvision.inference.predictor import Predictions

    spans: dict[int, tuple[int, int, int]] = {}  # sample index -> (share, first row, end row)
    for p, (indices, preds) in enumerate(parts):
        _rows_aligned(p, indices, preds, samples)
        _ids_once([samples[i] for i in indices])  # rows are told apart by their sample's id
        row, without_rows, left_out = 0, [], set(preds.left_out)
        for i in indices:
            if i in spans:
                raise RuntimeError(f"sample {samples[i].id!r} was predicted by two processes")
            end = row
            while end < len(preds.sample_ids) and preds.sample_ids[end] == samples[i].id:
                end += 1
            if end == row and samples[i].id not in left_out:
                without_rows.append(samples[i].id)
            spans[i] = (p, row, end)
            row = end
        _all_rows_used(p, preds.sample_ids[row:], without_rows)
    missing = [samples[i].id for i in range(len(samples)) if i not in spans]
    if missing:
        raise RuntimeError(f"no process predicted sample {missing[0]!r}")
    out = Predictions([], torch.empty(0), None)
    outputs, targets, remap = [], [], {}  # remap: (share, local row) -> global row
    for i in range(len(samples)):
        p, start, end = spans[i]
        preds = parts[p][1]
        for r in range(start, end):
            remap[p, r] = len(out.sample_ids)
            out.sample_ids.append(preds.sample_ids[r])
            if preds.frames:
                out.frames.append(preds.frames[r])
        outputs.append(preds.outputs[start:end])
        if preds.targets is not None:
            targets.append(preds.targets[start:end])
    for p, (_, preds) in enumerate(parts):
        out.skipped.extend(m for m in preds.skipped if m not in out.skipped)
        out.left_out.extend(preds.left_out)
        out.sample_frames.update(preds.sample_frames)
        out.attention.update(preds.attention)
        out.clips.extend((remap.get((p, row), row), features) for row, features in preds.clips)
    width = next((preds.outputs.shape[1] for _, preds in parts if preds.outputs.dim() == 2), 0)
    out.outputs = torch.cat(outputs) if outputs else torch.empty(0, width)
    out.targets = torch.cat(targets) if targets else None
    out.clips.sort(key=lambda clip: clip[0])
    return out


_SAME_SAMPLES = "do all processes see the same samples, in the same order? (each one discovers them itself)"


def _rows_aligned(rank: int, indices: list[int], preds: "Predictions", samples: list[Sample]) -> None:
    """A share's indices are samples here, and its ids, outputs, targets and images are as many rows."""
    outside = [i for i in indices if not 0 <= i < len(samples)]
    if outside:
        raise DataError(f"rank {rank} predicted sample number {outside[0]}, but there are {len(samples)} samples here; {_SAME_SAMPLES}")
    counts = {"ids": len(preds.sample_ids), "outputs": len(preds.outputs)}
    if preds.targets is not None:
        counts["targets"] = len(preds.targets)
    if preds.frames:
        counts["images"] = len(preds.frames)
    if len(set(counts.values())) > 1:
        raise DataError(f"rank {rank} returned rows that do not line up ({', '.join(f'{n} {k}' for k, n in counts.items())})")


def _all_rows_used(rank: int, left_over: list[str], without_rows: list[str]) -> None:
    """Rows of a share that no sample of it took, or its samples that got no rows (and were not left
    out): either way its rows would be silently lost or misattributed."""
    if not left_over and not without_rows:
        return
    said = []
    if left_over:
        said.append(f"{len(left_over)} row(s) no sample of its share took (ids {_few(left_over)})")
    if without_rows:
        said.append(f"no rows for {len(without_rows)} of its samples, not left out either ({_few(without_rows)})")
    raise DataError(f"rank {rank}'s predictions do not match the samples it was given: {'; '.join(said)}; {_SAME_SAMPLES}")


def _few(ids: list[str], n: int = 3) -> str:
    shown = ", ".join(repr(i) for i in list(dict.fromkeys(ids))[:n])
    return shown + (", ..." if len(set(ids)) > n else "")


def _ids_once(samples: list[Sample]) -> None:
    """The shares' rows are matched to their samples by id: two samples under one id (a sample whose images
    were all skipped between them, say) would run their rows together."""
    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:
            raise RuntimeError(f"sample id {sample.id!r} is given twice; give each sample once (or distinct ids)")
        seen.add(sample.id)
