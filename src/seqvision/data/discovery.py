"""Find samples on disk without reading pixels: the folder layout and CSV / JSONL manifests.

Folder layout: ``ROOT/<label>/<sample_id>/<images>``, optionally under ``ROOT/{train,val,test}/``.
Manifest, one row per image: ``sample_id, label, path[, index]``; or one row per sample with ``paths``
(a JSON list, or ``;``-separated in CSV). Relative paths resolve against the manifest's folder.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Iterator

from seqvision.data.samples import SPLITS, FrameRef, Sample, is_image_file, natural_key
from seqvision.errors import DataError

MANIFEST_SUFFIXES = (".csv", ".jsonl")
_ID_COLUMNS = ("sample_id", "sample", "id")
_PATH_COLUMNS = ("path", "image", "file")
_PATHS_COLUMNS = ("paths", "images", "files")


def discover(
    source: str | Path, *, targets: list[str] | None = None, require_labels: bool = True
) -> list[Sample]:
    """Samples of a data root or a manifest, sorted by id. Reads no image data.

    Args:
        source: a folder (``ROOT/<label>/<sample>/...``) or a ``.csv`` / ``.jsonl`` manifest.
        targets: manifest columns holding regression targets (None: a ``label`` column, or ``target*``
            columns when there is no label column).
        require_labels: False for prediction, where samples may carry no label.
    """
    path = Path(source)
    if not path.exists():
        raise DataError(f"data {path} does not exist; pass a data folder or a .csv/.jsonl manifest")
    if path.is_file():
        if path.suffix.lower() not in MANIFEST_SUFFIXES:
            raise DataError(f"{path}: a manifest must be a .csv or .jsonl file")
        samples = read_manifest(path, targets=targets, require_labels=require_labels)
    else:
        samples = discover_folders(path)
    if not samples:
        raise DataError(f"{path}: no samples found; expected ROOT/<label>/<sample_id>/<images> or a manifest")
    return samples


# --------------------------------------------------------------------------------------------- folders


def _scan_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files in natural order, sub-folders) of one folder; hidden entries are ignored."""
    images, subdirs = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                subdirs.append(Path(entry.path))
            elif is_image_file(Path(entry.name)):
                images.append(Path(entry.path))
    images.sort(key=lambda p: natural_key(p.name))
    subdirs.sort(key=lambda p: natural_key(p.name))
    return images, subdirs


def discover_folders(root: Path) -> list[Sample]:
    """``ROOT/[split/]<label>/<sample_id>/<images>`` -> samples labelled by their parent folder."""
    _, top = _scan_images(root)
    split_dirs = [d for d in top if d.name in SPLITS]
    groups = [(d.name, d) for d in split_dirs] if split_dirs else [(None, root)]
    samples: list[Sample] = []
    for split, split_root in groups:
        loose, label_dirs = _scan_images(split_root)
        if loose:
            raise DataError(
                f"{split_root} holds images directly ({loose[0].name}, ...); put each sample's images in "
                f"its own folder: {split_root}/<label>/<sample_id>/<images>"
            )
        for label_dir in label_dirs:
            loose, sample_dirs = _scan_images(label_dir)
            if loose:
                raise DataError(
                    f"{label_dir} holds images directly ({loose[0].name}, ...); expected one folder per "
                    f"sample: {label_dir}/<sample_id>/<images>"
                )
            for sample_dir in sample_dirs:
                images, _ = _scan_images(sample_dir)
                samples.append(
                    Sample(
                        id=sample_dir.relative_to(root).as_posix(),
                        frames=[FrameRef(p) for p in images],
                        label=label_dir.name,
                        split=split,
                        source=str(sample_dir),
                    )
                )
    return samples


def discover_inputs(inputs: Iterable[str | Path]) -> list[Sample]:
    """Prediction inputs: sample folders (images directly inside), data roots, or manifests."""
    samples: list[Sample] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise DataError(f"input {path} does not exist")
        if path.is_file():
            samples.extend(discover(path, require_labels=False))
            continue
        images, subdirs = _scan_images(path)
        if images:  # a single sample folder
            samples.append(Sample(id=str(path), frames=[FrameRef(p) for p in images], source=str(path)))
            continue
        found = [s for s in _walk_sample_dirs(path)]
        if not found:
            raise DataError(f"input {path}: no images found in it or its sub-folders")
        samples.extend(found)
    return samples


def _walk_sample_dirs(root: Path) -> Iterator[Sample]:
    """Every folder under ``root`` that holds images directly is one sample (label = its parent's name)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted((d for d in dirnames if not d.startswith(".")), key=natural_key)
        images = sorted((f for f in filenames if is_image_file(Path(f))), key=natural_key)
        if images:
            folder = Path(dirpath)
            yield Sample(
                id=str(folder),
                frames=[FrameRef(folder / f) for f in images],
                label=folder.parent.name if folder != root else None,
                source=str(folder),
            )


# ------------------------------------------------------------------------------------------- manifests


def _read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) of a CSV (with header) or JSONL manifest."""
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                if not reader.fieldnames:
                    raise DataError(f"{path}: empty manifest; the first line must be a header")
                for row in reader:
                    if None in row:  # more cells than header columns
                        raise DataError(f"{path} line {reader.line_num}: more values than header columns")
                    yield reader.line_num, {k.strip(): (v.strip() if v is not None else None) for k, v in row.items()}
        else:
            with open(path, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path} line {lineno}: not valid JSON ({exc.msg})") from None
                    if not isinstance(row, dict):
                        raise DataError(f"{path} line {lineno}: expected a JSON object per line")
                    yield lineno, row
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason}); save the manifest as UTF-8") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from None


def _first(row: dict[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        if row.get(name) not in (None, ""):
            return row[name]
    return None


def _parse_paths(value: Any, where: str) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                raise DataError(f"{where}: 'paths' looks like JSON but does not parse") from None
            return _parse_paths(parsed, where)
        return [p.strip() for p in text.split(";") if p.strip()]
    raise DataError(f"{where}: 'paths' must be a list or a ';'-separated string")


def _parse_float(value: Any, where: str, column: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: column {column!r} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise DataError(f"{where}: column {column!r} is {value!r}; targets must be finite numbers")
    return out


def read_manifest(path: Path, *, targets: list[str] | None = None, require_labels: bool = True) -> list[Sample]:
    """Parse a manifest into samples; every malformed row is an error naming its line."""
    base = path.parent
    frames: dict[str, list[tuple[float | None, int, Path]]] = defaultdict(list)
    meta: dict[str, dict[str, Any]] = {}
    lines: dict[str, int] = {}
    target_cols = targets
    for lineno, row in _read_rows(path):
        where = f"{path} line {lineno}"
        sample_id = _first(row, _ID_COLUMNS)
        if sample_id is None:
            raise DataError(f"{where}: no sample id; add a 'sample_id' column")
        sample_id = str(sample_id)
        if target_cols is None:
            target_cols = [] if "label" in row else sorted(k for k in row if k.startswith("target"))
        label = row.get("label")
        label = None if label in (None, "") else str(label)
        values = None
        if target_cols and (require_labels or all(row.get(c) not in (None, "") for c in target_cols)):
            values = {c: _parse_float(row.get(c), where, c) for c in target_cols}
        if require_labels and label is None and values is None:
            raise DataError(f"{where}: sample {sample_id!r} has no 'label' (or target columns)")
        split = row.get("split") or None
        if split is not None and split not in SPLITS:
            raise DataError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
        entry = {"label": label, "targets": values, "split": split}
        if sample_id in meta and meta[sample_id] != entry:
            raise DataError(
                f"{where}: sample {sample_id!r} has label/targets/split {entry} here but "
                f"{meta[sample_id]} on line {lines[sample_id]}; one sample has one target"
            )
        meta.setdefault(sample_id, entry)
        lines.setdefault(sample_id, lineno)

        single = _first(row, _PATH_COLUMNS)
        many = _first(row, _PATHS_COLUMNS)
        if single is None and many is None:
            raise DataError(f"{where}: sample {sample_id!r} has no 'path' (or 'paths') value")
        if many is not None:
            if frames[sample_id]:
                raise DataError(f"{where}: sample {sample_id!r} appears on more than one per-sample row")
            rel_paths = _parse_paths(many, where)
            items = [(float(i), lineno, base / p) for i, p in enumerate(rel_paths)]
        else:
            index = row.get("index")
            index = None if index in (None, "") else _parse_float(index, where, "index")
            items = [(index, lineno, base / str(single))]
        for index, ln, p in items:
            if not p.is_file():
                raise DataError(f"{path} line {ln}: sample {sample_id!r}: image file {p} does not exist")
            frames[sample_id].append((index, ln, p))

    samples = []
    for sample_id, entries in frames.items():
        samples.append(
            Sample(
                id=sample_id,
                frames=[FrameRef(p) for p in _order_frames(path, sample_id, entries)],
                source=f"{path} line {lines[sample_id]}",
                **meta[sample_id],
            )
        )
    return samples


def _order_frames(path: Path, sample_id: str, entries: list[tuple[float | None, int, Path]]) -> list[Path]:
    """By ``index`` when every row has one, else by natural sort of the file name."""
    with_index = [e for e in entries if e[0] is not None]
    if with_index and len(with_index) != len(entries):
        raise DataError(f"{path}: sample {sample_id!r}: some rows have an 'index' and some do not; give all or none")
    if with_index:
        seen: dict[float, int] = {}
        for index, ln, _ in entries:
            if index in seen:
                raise DataError(f"{path} line {ln}: sample {sample_id!r} repeats index {index:g} (line {seen[index]})")
            seen[index] = ln
        return [p for _, _, p in sorted(entries, key=lambda e: e[0])]
    return sorted((p for _, _, p in entries), key=lambda p: natural_key(p.name))
