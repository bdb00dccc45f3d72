"""Train/val/test assignment: the data's own splits when it has them, else a seeded stratified split."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

from seqvision.data.samples import SPLITS, Sample
from seqvision.errors import DataError
from seqvision.io import atomic_write_text


def assign_splits(
    samples: list[Sample], *, val_fraction: float, test_fraction: float, seed: int, stratify: bool = True
) -> dict[str, str]:
    """``{sample_id: split}``. Samples that name their split keep it; the others are split per label."""
    result = {s.id: s.split for s in samples if s.split}
    todo = [s for s in samples if not s.split]
    if not todo:
        return result
    given = set(result.values())
    # A split the data already provides is not carved out of the rest again.
    fractions = {"val": 0.0 if "val" in given else val_fraction, "test": 0.0 if "test" in given else test_fraction}
    groups: dict[str | None, list[Sample]] = defaultdict(list)
    for s in todo:
        groups[s.label if stratify else None].append(s)
    rng = random.Random(seed)
    for key in sorted(groups, key=str):
        members = sorted(groups[key], key=lambda s: s.id)
        rng.shuffle(members)
        n = len(members)
        n_val = round(n * fractions["val"])
        n_test = round(n * fractions["test"])
        if n - n_val - n_test < 1 and n > 0:  # keep at least one training sample per class
            n_test = max(0, n - n_val - 1)
        for i, s in enumerate(members):
            result[s.id] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    return result


def save_splits(splits: dict[str, str], path: Path) -> None:
    atomic_write_text(path, json.dumps(splits, indent=1, sort_keys=True))


def load_splits(path: Path, samples: list[Sample]) -> dict[str, str]:
    """Read a saved split; the data must still hold exactly the samples it names."""
    splits = json.loads(Path(path).read_text())
    ids = {s.id for s in samples}
    if set(splits) != ids:
        added, gone = sorted(ids - set(splits)), sorted(set(splits) - ids)
        raise DataError(
            f"{path} was saved for other data ({len(added)} samples added, e.g. {added[:2]}; {len(gone)} "
            f"gone, e.g. {gone[:2]}); use a new --out folder or delete the file"
        )
    bad = [v for v in splits.values() if v not in SPLITS]
    if bad:
        raise DataError(f"{path}: unknown split {bad[0]!r}")
    return splits
