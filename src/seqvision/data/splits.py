"""Train/val/test assignment: the data's own splits when it has them, else a seeded split by group.

Samples that share a source (a ``group``: the video, object, subject or session they come from) always
land in the same split, so validation and test never see a source that training saw. Within that rule
the split is stratified by label: each label's groups are shared out in proportion. Without groups every
sample is a group of its own.
"""

from __future__ import annotations

import json
import random
import re
import warnings
from collections import Counter, defaultdict
from pathlib import Path

from seqvision.data.packs import is_member_path
from seqvision.data.samples import SPLITS, Sample
from seqvision.errors import DataError
from seqvision.io import atomic_write_text

# A unit of assignment: a group (every sample that shares a source) or one sample without a group.
_Unit = list[Sample]


def assign_splits(
    samples: list[Sample], *, val_fraction: float, test_fraction: float, seed: int, stratify: bool = True
) -> dict[str, str]:
    """``{sample_id: split}``. Samples that name their split keep it (and the rest of their group
    follows them); the others are split by group, stratified by label as far as the groups allow.

    Raises:
        DataError: the data has groups, but too few to give training and each requested split one.
    """
    result = {s.id: s.split for s in samples if s.split}
    given = _given_group_splits(samples)
    todo = []
    for s in samples:
        if s.split:
            continue
        if s.group is not None and s.group in given:  # its group already sits in a split: follow it
            result[s.id] = given[s.group]
        else:
            todo.append(s)
    if not todo:
        return result
    provided = set(result.values())
    # A split the data already provides is not carved out of the rest again.
    fractions = {"val": 0.0 if "val" in provided else val_fraction, "test": 0.0 if "test" in provided else test_fraction}
    wanted = [name for name in ("val", "test") if fractions[name] > 0]
    units = _units(todo)
    grouped = any(s.group is not None for s in todo)
    if grouped and len(units) < 1 + len(wanted):
        raise DataError(
            f"the data has {len(units)} group(s) to split, too few for train, {' and '.join(wanted)} (samples of one group "
            "never straddle a split); add samples from more sources, give a 'split' column, or set "
            + " / ".join(f"--{name}-fraction 0" for name in wanted)
        )
    strata: dict[str | None, list[_Unit]] = defaultdict(list)
    for unit in units:
        strata[_majority_label(unit) if stratify else None].append(unit)
    rng = random.Random(seed)
    chosen: dict[str, list[_Unit]] = {"train": [], "val": [], "test": []}
    for key in sorted(strata, key=str):
        for name, picked in _share_out(strata[key], fractions, wanted, rng).items():
            chosen[name].extend(picked)
    for name in wanted:  # fractions smaller than any unit can leave a split empty: fill it if training can spare one
        if not chosen[name]:
            _fill(chosen, name, stratify=stratify, grouped=grouped)
    for name, picked in chosen.items():
        for unit in picked:
            for s in unit:
                result[s.id] = name
    return result


def planned_splits(
    samples: list[Sample], *, val_fraction: float, test_fraction: float, seed: int, stratify: bool,
    splits_file: Path | None = None,
) -> dict[str, str]:
    """``{sample_id: split}`` as ``train`` decides it: a saved ``splits_file`` is reused (a resumed run),
    else :func:`assign_splits`, after saying once when samples without groups seem to share sources (a
    split that holds samples out would then leak). ``seqvision inspect`` asks this same function."""
    if splits_file is not None and splits_file.exists():
        return load_splits(splits_file, samples)
    if val_fraction or test_fraction:  # something is held out, so something could leak
        _warn_if_sources_look_shared(samples)
    return assign_splits(samples, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, stratify=stratify)


def _warn_if_sources_look_shared(samples: list[Sample]) -> None:
    """Once, before a random split: samples without groups that seem to share sources would leak."""
    if any(s.group is not None for s in samples) or all(s.split for s in samples):
        return
    hint = shared_source_hint(samples)
    if hint:
        warnings.warn(
            f"no groups given, but {hint}: several samples may come from one video, object or session, and a "
            "random split puts them on both sides, so validation and test accuracy may be optimistic. Name each "
            "sample's source with a 'group' column (or --group-by COLUMN; for folders --group-by REGEX on the "
            "sample names) to split by source",
            stacklevel=4,
        )


def _fill(chosen: dict[str, list[_Unit]], name: str, *, stratify: bool, grouped: bool) -> None:
    """Give the empty split ``name`` the smallest unit another held-out split can spare (one holding two
    or more), else the smallest training unit whose label keeps another unit in training. With groups, a
    split that cannot be filled so is an error (never a silently empty one, nor a class taken out of
    training); without groups it stays empty, as the fractions asked (train warns)."""
    for other in ("val", "test"):
        if other != name and len(chosen[other]) > 1:
            smallest = min(chosen[other], key=lambda u: (len(u), u[0].id))
            chosen[other].remove(smallest)
            chosen[name].append(smallest)
            return
    per_label = Counter(_majority_label(u) if stratify else None for u in chosen["train"])
    spare = [u for u in chosen["train"] if per_label[_majority_label(u) if stratify else None] > 1]
    if not spare:
        if grouped:
            raise DataError(
                f"the {name} split would get no group without taking the only group of a class out of training; add "
                f"samples from more sources, give a 'split' column, or set --{name}-fraction 0"
            )
        return
    smallest = min(spare, key=lambda u: (len(u), u[0].id))
    chosen["train"].remove(smallest)
    chosen[name].append(smallest)


def _given_group_splits(samples: list[Sample]) -> dict[str, str]:
    """The split of each group that the data places (a split column or folder); a group placed in two
    splits by the data itself is the user's choice, but it leaks, so we say so."""
    splits: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        if s.split and s.group is not None:
            splits[s.group].add(s.split)
    straddling = sorted(g for g, names in splits.items() if len(names) > 1)
    if straddling:
        warnings.warn(
            f"the data's own split puts {len(straddling)} group(s) in several splits (e.g. {straddling[0]!r} in "
            f"{' and '.join(sorted(splits[straddling[0]]))}): those splits share sources, so their metrics may be optimistic",
            stacklevel=3,
        )
    return {g: names.pop() for g, names in splits.items() if len(names) == 1}


def _units(samples: list[Sample]) -> list[_Unit]:
    """Groups (and single samples without a group), in a fixed order so a seed always gives one split."""
    by_key: dict[tuple[int, str], _Unit] = {}
    for s in samples:
        key = (0, s.group) if s.group is not None else (1, s.id)
        by_key.setdefault(key, []).append(s)
    return [sorted(by_key[key], key=lambda s: s.id) for key in sorted(by_key)]


def _majority_label(unit: _Unit) -> str | None:
    """The stratum of a group: its most common label (ties: the first name)."""
    counts = Counter(s.label for s in unit if s.label is not None)
    if not counts:
        return None
    top = max(counts.values())
    return min(label for label, n in counts.items() if n == top)


def _share_out(units: list[_Unit], fractions: dict[str, float], wanted: list[str], rng: random.Random) -> dict[str, list[_Unit]]:
    """Share one stratum's units out: in a seeded order, each goes to the held-out split that is furthest
    below its share of the stratum's samples, when that gap covers at least half the unit; else to
    training. At least one unit of the stratum always stays in training."""
    order = list(units)
    rng.shuffle(order)
    total = sum(len(u) for u in order)
    got = {name: 0 for name in wanted}
    out: dict[str, list[_Unit]] = {"train": [], "val": [], "test": []}
    for i, unit in enumerate(order):
        last_chance_for_train = not out["train"] and i == len(order) - 1
        gaps = {name: total * fractions[name] - got[name] for name in wanted}
        name = max(wanted, key=lambda n: gaps[n]) if wanted else "train"
        if name != "train" and gaps[name] >= len(unit) / 2 and not last_chance_for_train:
            got[name] += len(unit)
        else:
            name = "train"
        out[name].append(unit)
    return out


# --------------------------------------------------------------------------------------- the split file


def save_splits(splits: dict[str, str], path: Path, samples: list[Sample] | None = None) -> None:
    """``splits.json``: the split of every sample and, for samples that have one, its group."""
    groups = {s.id: s.group for s in samples or () if s.group is not None}
    atomic_write_text(path, json.dumps({"splits": splits, "groups": groups}, indent=1, sort_keys=True))


def read_split_file(path: Path) -> dict[str, str]:
    """``{sample_id: split}`` of a ``splits.json`` (also the flat format written before groups)."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the saved split ({exc}); restore it or use a new --out folder") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: not a split file; restore it or use a new --out folder")
    # the new format holds {"splits": {...}, "groups": {...}}; the flat one maps sample ids to splits
    splits = raw["splits"] if isinstance(raw.get("splits"), dict) else raw
    return splits


def load_splits(path: Path, samples: list[Sample]) -> dict[str, str]:
    """Read a saved split; the data must still hold exactly the samples it names."""
    splits = read_split_file(path)
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


# ------------------------------------------------------------------------ sources shared without groups

# a trailing number, optionally after a clip/view/part marker: 'v_Run_g08_c01' -> 'v_Run_g08', 'obj12_v3' -> 'obj12'
_TRAILING_INDEX = re.compile(r"[\W_]*(?:clip|view|part|segment|seg|camera|cam|crop|shot|take|c|v)?[\W_]*\d+$", re.IGNORECASE)


def shared_source_hint(samples: list[Sample]) -> str | None:
    """Evidence, in words, that samples without groups share sources (so a random split leaks); None
    when nothing suggests it. Three signs: an image file in several samples; several samples' images in
    one folder (when the folders are more than the labels); sample names that differ only in a trailing
    clip or view number (when those stems are more than the labels)."""
    labels = {s.label for s in samples}
    owner: dict[Path, str] = {}
    for s in samples:
        for frame in s.frames:
            other = owner.setdefault(frame.path, s.id)
            if other != s.id:
                return f"samples {other!r} and {s.id!r} both use the image {frame.path}"
    by_folder: dict[Path, list[str]] = defaultdict(list)
    for s in samples:
        folders = {frame.path.parent for frame in s.frames}
        if len(folders) == 1 and not is_member_path(s.frames[0].path):  # one shard holds many samples by design
            by_folder[folders.pop()].append(s.id)
    shared = [ids for ids in by_folder.values() if len(ids) > 1]
    if shared and len(by_folder) > len(labels):
        return f"{sum(map(len, shared))} samples take their images from {len(shared)} shared folders (e.g. {shared[0][0]!r} and {shared[0][1]!r})"
    by_stem: dict[str, list[str]] = defaultdict(list)
    for s in samples:
        name = s.id.rsplit("/", 1)[-1]
        stem = _TRAILING_INDEX.sub("", Path(name).stem if s.video is not None else name)
        if stem and stem != name:
            by_stem[stem].append(s.id)
    shared = [ids for ids in by_stem.values() if len(ids) > 1]
    if shared and len(by_stem) > len(labels) and 2 * sum(map(len, shared)) >= len(samples):
        return f"sample names differ only in a trailing number (e.g. {shared[0][0]!r} and {shared[0][1]!r})"
    return None
