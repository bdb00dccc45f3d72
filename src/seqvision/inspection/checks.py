"""Leaks and problems in an :class:`~seqvision.inspection.facts.Inspection`, each with a one-line verdict
that names what to change. A leak (something in two splits) or an unreadable file is ``strict``: with
``seqvision inspect --strict`` it makes the exit status non-zero.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Hashable, Iterable

from seqvision.data.samples import Sample
from seqvision.data.splits import shared_source_hint
from seqvision.inspection.facts import UNASSIGNED, Inspection, label_of, video_clip_key

MAX_EXAMPLES = 5  # examples named per finding; the count says how many there are


@dataclass
class Finding:
    """One kind of leak or problem: how many, a few examples, and what to do about it."""

    kind: str  # leak | problem
    title: str
    count: int
    verdict: str  # one line: the fix, naming the flag or the file to change
    examples: list[str] = field(default_factory=list)
    strict: bool = False  # fails `inspect --strict`

    def line(self) -> str:
        return f"{self.kind}: {self.title} ({self.count:,}): {self.verdict}"


def find_all(result: Inspection) -> list[Finding]:
    """Every finding, leaks first."""
    found = [*_leaks(result), *_file_problems(result), *_sample_problems(result), *_split_problems(result)]
    return sorted((f for f in found if f.count), key=lambda f: f.kind != "leak")


# ---------------------------------------------------------------------------------------------- leaks


def _leaks(result: Inspection) -> list[Finding]:
    split = result.split_of
    grouped = any(s.group is not None for s in result.samples)
    where_to = ("move the samples that share them into one split (the data's split column or folders)"
                if all(s.split for s in result.samples) else
                "name each sample's source so it stays in one split: a 'group' column or --group-by COLUMN "
                "(folders: --group-by REGEX on the sample names)" if not grouped else
                "give the samples that share them one group (their 'group' value, or a --group-by that matches)")
    files = _several(((f.path, s) for s in result.samples if s.video is None for f in s.frames), split)
    videos = _several(((s.video.path, s) for s in result.samples if s.video is not None), split)
    copies = _copies_in_several_splits(result)
    same, duplicates = _identical_samples(result)
    return [
        Finding("leak", "the same image file in several splits", len(files), where_to, _described(files), strict=True),
        Finding("leak", "clips of one video file in several splits", len(videos), where_to, _described(videos), strict=True),
        Finding("leak", "the same content (sha256) under other file names in several splits", len(copies),
                "remove the copies, or give the samples that hold them one group", copies[:MAX_EXAMPLES], strict=True),
        Finding("leak", "identical samples (the same image list) in several splits", len(same),
                "remove all but one of each, or give them one group", _samples_text(same, split), strict=True),
        Finding("problem", "identical samples (the same image list) within one split", len(duplicates),
                "remove all but one of each: a duplicate counts twice in training and in the metrics",
                _samples_text(duplicates, split)),
        _straddling_groups(result.samples),
    ]


def _several(pairs: Iterable[tuple[Hashable, Sample]], split: dict[str, str]) -> list[tuple[Hashable, dict[str, str]]]:
    """``(key, {split: a sample id})`` of the keys (files) that samples of two or more splits use."""
    users: dict[Hashable, dict[str, str]] = defaultdict(dict)
    for key, sample in pairs:
        name = split.get(sample.id, UNASSIGNED)
        if name != UNASSIGNED:
            users[key].setdefault(name, sample.id)
    return [(key, by) for key, by in users.items() if len(by) > 1]


def _described(several: list[tuple[Hashable, dict[str, str]]]) -> list[str]:
    """The first :data:`MAX_EXAMPLES` of :func:`_several` in words (only they are shown: a big data set
    can have a million)."""
    return [f"{key}: {_users(by)}" for key, by in several[:MAX_EXAMPLES]]


def _users(by: dict[str, str]) -> str:
    return ", ".join(f"{sid!r} ({name})" for name, sid in sorted(by.items()))


def _copies_in_several_splits(result: Inspection) -> list[str]:
    """Contents held by two or more different files whose samples sit in two or more splits."""
    files_of: dict[str, set] = defaultdict(set)
    for path, digest in result.hashes.items():
        files_of[digest].add(path)
    copied = {path: digest for digest, paths in files_of.items() if len(paths) > 1 for path in paths}
    if not copied:
        return []
    pairs = [(copied[f.path], s) for s in result.samples for f in s.frames if f.path in copied]
    pairs += [(copied[s.video.path], s) for s in result.samples if s.video is not None and s.video.path in copied]
    return [f"{' = '.join(sorted(map(str, files_of[digest])))}: {_users(by)}" for digest, by in _several(pairs, result.split_of)]


def _identical_samples(result: Inspection) -> tuple[list[list[Sample]], list[list[Sample]]]:
    """Samples with the same image list (by content when hashed, else by path) or the same video clip:
    (those in several splits, those within one split)."""
    hashes = result.hashes
    by_key: dict[tuple, list[Sample]] = defaultdict(list)
    for s in result.samples:
        if s.video is not None:
            by_key[("video", hashes.get(s.video.path, s.video.path), *video_clip_key(s.video)[1:])].append(s)
        elif s.frames:  # the paths themselves (hashable, and shared by the rows that name them) unless hashed
            by_key[tuple(hashes.get(f.path, f.path) for f in s.frames) if hashes else tuple(f.path for f in s.frames)].append(s)
    across, within = [], []
    for same in by_key.values():
        if len(same) > 1:
            splits = {result.split_of.get(s.id, UNASSIGNED) for s in same} - {UNASSIGNED}
            (across if len(splits) > 1 else within).append(same)
    return across, within


def _samples_text(found: list[list[Sample]], split: dict[str, str]) -> list[str]:
    return [", ".join(f"{s.id!r} ({split.get(s.id, UNASSIGNED)})" for s in same[:4]) for same in found[:MAX_EXAMPLES]]


def _straddling_groups(samples: list[Sample]) -> Finding:
    """Groups that the data's own split (a split column or folders) puts in several splits."""
    splits: dict[str, dict[str, str]] = defaultdict(dict)
    for s in samples:
        if s.split and s.group is not None:
            splits[s.group].setdefault(s.split, s.id)
    lines = [f"group {g!r}: {_users(by)}" for g, by in splits.items() if len(by) > 1]
    return Finding("leak", "groups that straddle the data's own split", len(lines),
                   "put all of a group's samples in one split (the 'split' column or folders), or leave their split "
                   "empty so train places the group", lines[:MAX_EXAMPLES], strict=True)


# ------------------------------------------------------------------------------------------- problems


def _file_problems(result: Inspection) -> list[Finding]:
    unreadable = [f"{p}: {why}" for p, why in result.unreadable.items()]
    truncated = [f"{p}: {why}" for p, why in result.truncated.items()]
    return [
        Finding("problem", "unreadable files", len(unreadable),
                "re-export them (an image over the pixel limit: smaller), remove them, or train with --on-bad-image skip "
                "(they are left out and reported)",
                unreadable[:MAX_EXAMPLES], strict=True),
        Finding("problem", "truncated videos (they stop before their headers say)", len(truncated),
                "export them again; train would repeat their last decodable frame", truncated[:MAX_EXAMPLES], strict=True),
    ]


def _sample_problems(result: Inspection) -> list[Finding]:
    minimum = result.options.get("min_images", 1)
    bad_clips = [f"{sid!r}: {why}" for sid, why in result.bad_clips.items()]
    empty, short = [], []
    for s in result.samples:
        n = result.frames_of.get(s.id, 0)
        if s.id in result.bad_clips or (s.video is not None and s.video.path in result.unreadable):
            continue  # said as a bad clip or an unreadable file
        if n == 0:
            empty.append(f"{s.id!r} ({s.source})")
        elif n < minimum:
            short.append(f"{s.id!r}: {n} frame(s)")
    return [
        Finding("problem", "video clips whose start/end do not fit their video", len(bad_clips),
                "correct the 'start' / 'end' columns of these rows", bad_clips[:MAX_EXAMPLES]),
        Finding("problem", "empty samples (no image)", len(empty),
                "add images or remove them; train stops at them unless --short-samples drop", empty[:MAX_EXAMPLES]),
        Finding("problem", f"samples shorter than --min-images {minimum}", len(short),
                "train with --short-samples drop (left out and reported), or a lower --min-images", short[:MAX_EXAMPLES]),
    ]


def _split_problems(result: Inspection) -> list[Finding]:
    found = []
    if result.split_error:
        found.append(Finding("problem", "the split cannot be made", 1, result.split_error))
    present: dict[str, set[str]] = defaultdict(set)
    for s in result.samples:
        present[label_of(s)].add(result.split_of.get(s.id, UNASSIGNED))
    used = set().union(*present.values()) - {UNASSIGNED} if present else set()
    missing = [f"{label!r}: none in {' or '.join(sorted(used - splits))}" for label, splits in sorted(present.items())
               if label != "(none)" and used - splits]
    if missing and result.task in ("classification", "multilabel"):
        found.append(Finding(
            "problem", "labels with too few samples or groups for the split", len(missing),
            "add samples of these labels (from more sources), give a 'split' column, or hold out less "
            "(--val-fraction / --test-fraction)", missing[:MAX_EXAMPLES]))
    planned = not all(s.split for s in result.samples)
    held_out = result.options.get("val_fraction") or result.options.get("test_fraction")
    if planned and held_out and not any(s.group is not None for s in result.samples):
        hint = shared_source_hint(result.samples)
        if hint:
            found.append(Finding(
                "problem", "no groups given, but samples seem to share sources", 1,
                "name each sample's source with a 'group' column or --group-by (folders: a regex on the sample "
                "names), so a source never straddles a split", [hint]))
    return found


def strict_failures(findings: list[Finding]) -> list[Finding]:
    """The findings that fail ``--strict``: leaks and unreadable or truncated files."""
    return [f for f in findings if f.strict and f.count]
