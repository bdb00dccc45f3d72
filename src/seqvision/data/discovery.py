"""Find samples on disk without reading pixels: the folder layout and CSV / JSONL manifests.

Folder layout: ``ROOT/<label>/<sample_id>/<images>``, optionally under ``ROOT/{train,val,test}/``.
Manifest, one row per image: ``sample_id, label, path[, index]``; or one row per sample with ``paths``
(a JSON list, or ``;``-separated in CSV). Relative paths resolve against the manifest's folder.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator

from seqvision.data.manifest import read_manifest
from seqvision.data.packs import is_pack, read_pack
from seqvision.data.remote import check_protocol, has_shards, is_url, list_tree, shown, suffix, to_path
from seqvision.data.samples import SPLITS, FrameRef, Sample, VideoClip, is_image_file, is_video_file, natural_key
from seqvision.errors import ConfigError, DataError
from seqvision.redact import without_password

log = logging.getLogger("seqvision")

MANIFEST_SUFFIXES = (".csv", ".jsonl")


def discover(
    source: str | Path, *, targets: list[str] | None = None, require_labels: bool = True, group_by: str | None = None
) -> list[Sample]:
    """Samples of a data root or a manifest, sorted by id. Reads no image data.

    Args:
        source: a folder (``ROOT/<label>/<sample>/...``), a ``.csv`` / ``.jsonl`` manifest, or a pack
            folder (tar shards and their ``index.json``, see :mod:`seqvision.data.packs`).
        targets: manifest columns holding regression targets (None: a ``label`` column, or ``target*``
            columns when there is no label column).
        require_labels: False for prediction, where samples may carry no label.
        group_by: what says which samples share a source: for a manifest, a column (default ``group``);
            for a folder or a pack, a regular expression searched in each sample's name (its folder or
            video file name), whose first match (or first capture group) is the group (a pack keeps the
            groups it was packed with otherwise).
    """
    if is_url(source):
        return _discover_url(str(source), targets=targets, require_labels=require_labels, group_by=group_by)
    path = Path(source)
    if not path.exists():
        raise DataError(f"data {path} does not exist; pass a data folder or a .csv/.jsonl manifest")
    if path.is_file():
        if not is_manifest(path):
            raise DataError(f"{path}: a manifest must be a .csv or .jsonl file")
        samples = read_manifest(path, targets=targets, require_labels=require_labels, group_column=group_by)
    elif is_pack(path):  # shards written by `seqvision pack`: the samples from its index, groups as packed
        samples = read_pack(path)
        if group_by is not None:
            group_by_name(samples, group_by)
    else:
        samples = discover_folders(path)
        if group_by is not None:
            group_by_name(samples, group_by)
    if not samples:
        if path.is_dir() and next(path.glob("*.tar"), None) is not None:
            raise DataError(f"{path} holds tar shards but no index.json: seqvision reads the packs that "
                            "`seqvision pack` writes; pack the source data (or restore the index)")
        raise DataError(f"{path}: no samples found; expected ROOT/<label>/<sample_id>/<images> or a manifest")
    return samples


def is_manifest(data: str | Path | None) -> bool:
    """Whether ``data`` names a manifest (a .csv / .jsonl file, or URL) rather than a folder."""
    return data is not None and suffix(data) in MANIFEST_SUFFIXES


def _discover_url(url: str, *, targets: list[str] | None, require_labels: bool, group_by: str | None) -> list[Sample]:
    """The samples of a manifest given as a URL (read through fsspec; its relative paths are keys beside it)."""
    if url[:7].lower() == "file://":
        return discover(to_path(url), targets=targets, require_labels=require_labels, group_by=group_by)
    check_protocol(url, "data")
    if is_manifest(url):
        samples = read_manifest(to_path(url), targets=targets, require_labels=require_labels, group_column=group_by)
    elif is_pack(url):  # a pack folder uploaded as it is: its index by URL, its members ranged reads of the shards
        samples = read_pack(url)
        if group_by is not None:
            group_by_name(samples, group_by)
    else:  # a folder: one listing of its keys, then the same layout rules as a local folder
        root, tree = list_tree(url)
        samples = discover_folders(root, scan=lambda folder: tree.get(folder, ([], [], [])))
        if group_by is not None:
            group_by_name(samples, group_by)
    if not samples:
        if has_shards(url):
            raise DataError(f"{without_password(url.rstrip('/'))}/index.json does not exist, but the folder holds tar shards: "
                            "seqvision reads the packs that `seqvision pack` writes; upload the pack's index.json too")
        raise DataError(f"data {without_password(url)}: no samples found; expected ROOT/<label>/<sample_id>/<images> or a manifest")
    return samples


def group_by_name(samples: list[Sample], pattern: str) -> None:
    """Set each sample's group to the first match of ``pattern`` in its name (the last part of its id):
    its first capture group when it has one, else the whole match. A name it does not match is an error."""
    regex = compile_group_pattern(pattern)
    for s in samples:
        name = s.id.rsplit("/", 1)[-1]
        found = regex.search(name)
        if found is None or not (found.group(1) if regex.groups else found.group(0)):
            raise DataError(
                f"sample {s.id!r} ({s.source}): --group-by {pattern!r} does not match its name {name!r}; "
                "use a pattern that finds the source in every sample name (e.g. '^[a-z]+\\d+' for 'obj12_view3')"
            )
        s.group = found.group(1) if regex.groups else found.group(0)


def compile_group_pattern(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"--group-by {pattern!r} is not a valid regular expression ({exc})") from None


# --------------------------------------------------------------------------------------------- folders


def _scan_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files in natural order, sub-folders) of one folder; hidden entries are ignored."""
    images, subdirs, _ = _scan(folder)
    return images, subdirs


def _scan(folder: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(image files, sub-folders, video files) of one folder, each in natural order; hidden entries ignored."""
    images, subdirs, videos = [], [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                subdirs.append(Path(entry.path))
            elif is_image_file(Path(entry.name)):
                images.append(Path(entry.path))
            elif is_video_file(Path(entry.name)):
                videos.append(Path(entry.path))
    for group in (images, subdirs, videos):
        group.sort(key=lambda p: natural_key(p.name))
    return images, subdirs, videos


def _video_sample(path: Path, *, id: str, label: str | None = None, split: str | None = None) -> Sample:
    return Sample(id=id, frames=[], label=label, split=split, source=str(path), video=VideoClip(path))


def discover_folders(root: Path, *, scan: Callable[[Path], tuple[list[Path], list[Path], list[Path]]] = _scan) -> list[Sample]:
    """``ROOT/[split/]<label>/<sample_id>/<images>`` -> samples labelled by their parent folder.
    ``scan``: a folder's (images, sub-folders, videos); a remote folder's come from one listing."""
    _, top, _ = scan(root)
    split_dirs = [d for d in top if d.name in SPLITS]
    groups = [(d.name, d) for d in split_dirs] if split_dirs else [(None, root)]
    samples: list[Sample] = []
    for split, split_root in groups:
        loose, label_dirs, _ = scan(split_root)
        if loose:
            raise DataError(
                f"{shown(split_root)} holds images directly ({loose[0].name}, ...); put each sample's images in "
                f"its own folder: {shown(split_root)}/<label>/<sample_id>/<images>"
            )
        for label_dir in label_dirs:
            loose, sample_dirs, videos = scan(label_dir)
            if loose:
                raise DataError(
                    f"{shown(label_dir)} holds images directly ({loose[0].name}, ...); expected one folder per "
                    f"sample: {shown(label_dir)}/<sample_id>/<images> (or one video file per sample)"
                )
            for video in videos:  # ROOT/<label>/<video file>: one sample per file
                samples.append(_video_sample(video, id=video.relative_to(root).as_posix(), label=label_dir.name, split=split))
            for sample_dir in sample_dirs:
                images, _, _ = scan(sample_dir)
                samples.append(
                    Sample(
                        id=sample_dir.relative_to(root).as_posix(),
                        frames=[FrameRef(p) for p in images],
                        label=label_dir.name,
                        split=split,
                        source=shown(sample_dir),
                    )
                )
    return samples


def discover_inputs(inputs: Iterable[str | Path]) -> list[Sample]:
    """Prediction inputs: sample folders (images directly inside), data roots, or manifests."""
    samples: list[Sample] = []
    for item in inputs:
        if is_url(item):  # a manifest by URL (an image or video by URL alone is not an input)
            samples.extend(discover(item, require_labels=False))
            continue
        path = Path(item)
        if not path.exists():
            raise DataError(f"input {path} does not exist")
        if path.is_file() and is_video_file(path):
            samples.append(_video_sample(path, id=str(path)))
            continue
        if path.is_file() or is_pack(path):
            samples.extend(discover(path, require_labels=False))
            continue
        images, subdirs = _scan_images(path)
        if images:  # a single sample folder
            samples.append(Sample(id=str(path), frames=[FrameRef(p) for p in images], source=str(path)))
            continue
        found = [s for s in _walk_sample_dirs(path)]
        if not found:
            raise DataError(f"input {path}: no images or videos found in it or its sub-folders")
        samples.extend(found)
    return _each_once(samples)


def _each_once(samples: list[Sample]) -> list[Sample]:
    """Each sample once. The same sample given twice (the same images or video under the same id: an input
    repeated) is predicted once, and said; two different samples under one id are refused, since their
    output rows could not be told apart."""
    kept: dict[str, Sample] = {}
    repeated: list[str] = []
    for sample in samples:
        first = kept.setdefault(sample.id, sample)
        if first is sample:
            continue
        if (first.frames, first.video) != (sample.frames, sample.video):
            raise DataError(f"two different samples are both named {sample.id!r} ({first.source} and {sample.source}); "
                            "give the inputs distinct names")
        repeated.append(sample.id)
    if repeated:
        log.warning("%d input sample(s) given more than once, predicted once: %s",
                    len(repeated), ", ".join(repr(r) for r in repeated[:5]))
    return list(kept.values())


def _walk_sample_dirs(root: Path) -> Iterator[Sample]:
    """Every folder under ``root`` that holds images directly is one sample (label = its parent's name);
    every video file is one sample (label = its folder's name)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted((d for d in dirnames if not d.startswith(".")), key=natural_key)
        folder = Path(dirpath)
        for name in sorted((f for f in filenames if is_video_file(Path(f))), key=natural_key):
            yield _video_sample(folder / name, id=str(folder / name), label=folder.name if folder != root else None)
        images = sorted((f for f in filenames if is_image_file(Path(f))), key=natural_key)
        if images:
            yield Sample(
                id=str(folder),
                frames=[FrameRef(folder / f) for f in images],
                label=folder.parent.name if folder != root else None,
                source=str(folder),
            )
