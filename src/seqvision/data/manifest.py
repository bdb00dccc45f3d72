"""CSV / JSONL manifests -> samples, without reading pixels; every malformed row is an error naming its line.

One row per image: ``sample_id, label, path[, index][, split][, group]``; or one row per sample with
``paths`` (a JSON list, or ``;``-separated in CSV). Relative paths resolve against the manifest's folder.
``group`` (or the column named by ``group_column``) names the source a sample shares with others (a
video, object, subject, session); clips of one video file are grouped by that file unless told. Also:
``labels`` (multi-label, ``;``-separated), ``target*`` columns (regression), ``frame_label`` /
``frame_labels`` / ``frame_target*`` (per-image targets), and ``video`` (or a video ``path``) with
optional ``start`` / ``end`` seconds.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import gc
import json
import math
import os
import reprlib
import stat
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from seqvision.data.samples import SPLITS, VIDEO_EXTENSIONS, FrameRef, Sample, VideoClip, is_video_name, natural_key
from seqvision.data.remote import check_protocol, join, open_text, shown, suffix, url_of
from seqvision.errors import DataError

_ID_COLUMNS = ("sample_id", "sample", "id")
_PATH_COLUMNS = ("path", "image", "file")
_PATHS_COLUMNS = ("paths", "images", "files")
_META = ("label", "targets", "split", "labels", "group")
_FRAME_LABEL = "frame_label"  # per-image class (sequence labelling), on one-row-per-image manifests
_FRAME_LABELS = "frame_labels"  # the same for a one-row-per-sample manifest, aligned with 'paths'
_FRAME_TARGET = "frame_target"  # prefix of per-image regression columns


def _read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) of a CSV (with header) or JSONL manifest; a UTF-8 byte-order mark is allowed."""
    try:
        if suffix(path) == ".csv":
            with _open_text(path, newline="") as fh:
                reader = csv.reader(fh)  # rows made here: what csv.DictReader does, at half the cost
                header = next(reader, None)
                if not header:
                    raise DataError(f"{shown(path)}: empty manifest; the first line must be a header")
                names = [name.strip() for name in header]
                for cells in reader:
                    if not cells:  # a blank line
                        continue
                    if len(cells) > len(names):
                        raise DataError(f"{shown(path)} line {reader.line_num}: more values than header columns")
                    row = dict(zip(names, map(str.strip, cells)))
                    for name in names[len(cells):]:  # fewer values than columns: the rest are missing
                        row[name] = None
                    yield reader.line_num, row
        else:
            with _open_text(path, newline=None) as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except RecursionError:
                        raise DataError(f"{shown(path)} line {lineno}: not valid JSON (nested too deeply)") from None
                    except ValueError as exc:  # JSONDecodeError, or an integer of more than 4300 digits
                        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "a number with too many digits"
                        raise DataError(f"{shown(path)} line {lineno}: not valid JSON ({reason})") from None
                    if not isinstance(row, dict):
                        raise DataError(f"{shown(path)} line {lineno}: expected a JSON object per line")
                    yield lineno, row
    except UnicodeDecodeError as exc:
        raise DataError(f"{shown(path)}: not UTF-8 text ({exc.reason}); save the manifest as UTF-8") from None
    except csv.Error as exc:
        raise DataError(f"{shown(path)}: malformed CSV ({exc})") from None
    except OSError as exc:
        raise DataError(f"{shown(path)}: cannot read the manifest ({exc.strerror or exc})") from None


def _open_text(path: Path, *, newline: str | None):
    """A manifest's text: a local file, or a remote one read whole (:func:`seqvision.data.remote.open_text`)."""
    if url_of(path) is not None:
        return open_text(path)
    return open(path, newline=newline, encoding="utf-8-sig")


_short = reprlib.Repr()
_short.maxstring = _short.maxother = _short.maxlong = 60


def _first(row: dict[str, Any], names: tuple[str, ...]) -> Any:
    """The value of the first of ``names`` that has one; an empty cell (or JSON list) has none."""
    for name in names:
        if row.get(name) not in (None, "", []):
            return row[name]
    return None


def _text(value: Any, where: str, what: str) -> str:
    """A sample id, label or path as text: a JSON number becomes text, a list or an object is an error."""
    if isinstance(value, (list, dict)):
        raise DataError(f"{where}: {what} must be text or a number, got {_short.repr(value)}")
    return str(value)


def _parse_paths(value: Any, where: str) -> list[str]:
    if isinstance(value, list):
        if any(isinstance(v, (list, dict)) for v in value):
            raise DataError(f"{where}: 'paths' must be a list of path strings, got {_short.repr(value)}")
        return [str(v) for v in value]
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except (ValueError, RecursionError):  # JSONDecodeError, too many digits, too deep
                raise DataError(f"{where}: 'paths' looks like JSON but does not parse") from None
            return _parse_paths(parsed, where)
        return [p.strip() for p in text.split(";") if p.strip()]
    raise DataError(f"{where}: 'paths' must be a list or a ';'-separated string")


def _parse_float(value: Any, where: str, column: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: column {column!r} must be a number, got {_short.repr(value)}") from None
    except OverflowError:  # a (JSON) integer beyond the float range
        out = math.inf
    if not math.isfinite(out):
        raise DataError(f"{where}: column {column!r} is {_short.repr(value)}; it must be a finite number")
    return out


def _video_clip(row: dict[str, Any], base: Path, where: str, single: Any) -> VideoClip | None:
    """A row naming a video (a ``video`` column, or a ``path`` to a video file: ``single``, the row's
    path value), with optional ``start`` / ``end`` seconds; None for an image row."""
    value = row.get("video")
    if value in (None, ""):
        value = single
        if not isinstance(value, str) or not is_video_name(_file_name(value)):
            return None
    file = join(base, _text(value, where, "'video'"))
    if url_of(file) is None and not _is_file(file):  # a URL: found missing when read, like an image
        raise DataError(f"{where}: video file {file} does not exist")
    start, end = (None if row.get(k) in (None, "") else _parse_float(row.get(k), where, k) for k in ("start", "end"))
    if start is not None and start < 0:
        raise DataError(f"{where}: 'start' must be 0 or more seconds, got {start:g}")
    if start is not None and end is not None and end <= start:
        raise DataError(f"{where}: 'end' ({end:g} s) must be after 'start' ({start:g} s)")
    return VideoClip(file, start, end)


_PLAIN_SEPARATOR = os.sep == "/" and os.altsep is None  # POSIX: '/' alone separates the parts of a path


def _may_name_video(text: str) -> bool:
    """False when ``text`` surely names no video file: what follows its last dot, once trailing separators
    and dots are stripped (as pathlib drops them), is no video extension. True is checked by
    :func:`_file_name` and :func:`is_video_name` (a video name ends in its extension's letters, so the
    strip never reaches into it)."""
    stripped = text.rstrip("/.\\")
    return stripped[stripped.rfind("."):].lower() in VIDEO_EXTENSIONS


def _file_name(text: str) -> str:
    """``Path(text).name`` without making a Path (a third of the indexing time of a big manifest went to
    one Path per row to ask whether it names a video): the text after the last '/'. A trailing '/', '.' or
    '..' (rare), and other systems' separators, are left to pathlib."""
    name = text.rpartition("/")[2]
    if name in ("", ".", "..") or not _PLAIN_SEPARATOR:
        return Path(text).name
    return name


def _is_file(path: Path) -> bool:
    """``Path.is_file``, but False instead of an error for a name too long, unreadable or not encodable."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: a big manifest makes millions of long-lived objects (and no
    cycles), which the collector would otherwise scan again and again (a third of the indexing time; and
    of every pass over the samples that allocates, such as ``seqvision inspect``'s)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_manifest(
    path: Path, *, targets: list[str] | None = None, require_labels: bool = True, group_column: str | None = None
) -> list[Sample]:
    """Parse a manifest into samples; every malformed row is an error naming its line.

    ``group_column``: the column naming each sample's source (None: ``group`` when the manifest has it);
    a named column that no row has is an error. A video sample without a group is grouped by its file, so
    clips cut from one video never straddle a split.
    """
    with gc_paused():
        samples, seen = _read_manifest(path, targets, require_labels, group_column or "group")
    if group_column is not None and not seen:
        raise DataError(f"{shown(path)}: --group-by {group_column!r}: no row has a {group_column!r} column")
    if group_column is not None and all(s.group is None for s in samples):
        raise DataError(f"{shown(path)}: --group-by {group_column!r}: the column is empty on every row; fill it with each sample's source")
    for s in samples:
        if s.group is None and s.video is not None:
            s.group = str(s.video.path)
    return samples


def _read_manifest(
    path: Path, targets: list[str] | None, require_labels: bool, group_column: str
) -> tuple[list[Sample], bool]:
    base = path.parent
    frames: dict[str, list[tuple]] = {}  # (index, line, image, per-image target) per image
    meta: dict[str, tuple] = {}  # label, targets, split, labels (multi-label), group
    lines: dict[str, int] = {}
    packed: set[str] = set()  # samples given by one row with a 'paths' list
    refs: dict[str, FrameRef] = {}  # each path as written, checked once: rows often share files
    videos: dict[str, VideoClip] = {}  # samples that are (clips of) video files
    target_cols = targets
    group_seen = False  # whether any row has the group column
    # what each set of column names holds: a CSV has one set, JSONL rows a few; asked per row, these
    # questions cost more than the rest of the row's reading
    shapes: dict[tuple[str, ...], _Columns] = {}
    protocols: set[str] = set()  # the URL protocols whose backend was found installed
    name = shown(path)
    for lineno, row in _read_rows(path):
        where = f"{name} line {lineno}"
        if target_cols is None:
            target_cols = [] if "label" in row else sorted(k for k in row if k.startswith("target"))
        names = tuple(row)
        columns = shapes.get(names)
        if columns is None:
            columns = shapes[names] = _Columns.of(names)
        sample_id, entry = _row_entry(row, where, target_cols, require_labels, group_column, columns)
        group_seen = group_seen or group_column in row
        known = meta.get(sample_id)
        if known is None:
            meta[sample_id], lines[sample_id], frames[sample_id] = entry, lineno, []
        elif known != entry:
            raise DataError(
                f"{where}: sample {sample_id!r} has label/targets/split/group {dict(zip(_META, entry))} here but "
                f"{dict(zip(_META, known))} on line {lines[sample_id]}; one sample has one target and one group"
            )
        single = _first(row, columns.path)  # asked once: both the video and the image reading want it
        # most rows are images: a row without a 'video' column whose path cannot name a video is not asked
        maybe_video = columns.video or (isinstance(single, str) and _may_name_video(single))
        video = _video_clip(row, base, where, single) if maybe_video else None
        if video is not None:  # one row, one clip: a video (or [start, end) seconds of it) is a sample
            if frames[sample_id] or sample_id in videos:
                raise DataError(f"{where}: sample {sample_id!r} is also on line {lines[sample_id]}; a video sample has one row")
            videos[sample_id] = video
            continue
        if sample_id in videos:
            raise DataError(f"{where}: sample {sample_id!r} is a video on line {lines[sample_id]}; it cannot also list images")
        images, is_list = _row_images(row, where, sample_id, require_labels, single, columns)
        if sample_id in packed or (is_list and frames[sample_id]):
            raise DataError(
                f"{where}: sample {sample_id!r} is also on line {lines[sample_id]}; a sample given by a 'paths' "
                "list has that one row only"
            )
        if is_list:
            packed.add(sample_id)
        for index, rel, payload in images:
            ref = refs.get(rel)
            if ref is None:
                file = join(base, rel)
                remote = url_of(file)
                if remote is not None:  # read (and found missing) when loaded: no request per row here
                    protocol = remote.partition(":")[0]
                    if protocol not in protocols:
                        check_protocol(remote, where)
                        protocols.add(protocol)
                elif not _is_file(file):
                    raise DataError(f"{where}: sample {sample_id!r}: image file {file} does not exist")
                ref = refs[rel] = FrameRef(file)  # FrameRef is immutable: rows naming one file share it
            frames[sample_id].append((index, lineno, ref, payload))
    return _assemble(path, frames, meta, lines, videos), group_seen


class _Columns(NamedTuple):
    """Which of the columns a row can have are among its names (each tuple in the order of precedence)."""

    video: bool  # a 'video' column
    id: tuple[str, ...]  # of _ID_COLUMNS
    path: tuple[str, ...]  # of _PATH_COLUMNS
    paths: tuple[str, ...]  # of _PATHS_COLUMNS
    per_image: bool  # any per-image target column
    frame_targets: list[str]  # the per-image regression columns, sorted

    @classmethod
    def of(cls, names: tuple[str, ...]) -> "_Columns":
        def present(wanted: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(c for c in wanted if c in names)

        frame_targets = sorted(k for k in names if k.startswith(_FRAME_TARGET))
        per_image = bool(frame_targets) or _FRAME_LABEL in names or _FRAME_LABELS in names
        return cls("video" in names, present(_ID_COLUMNS), present(_PATH_COLUMNS), present(_PATHS_COLUMNS), per_image, frame_targets)


def _row_entry(
    row: dict, where: str, target_cols: list[str], require_labels: bool, group_column: str, columns: _Columns
) -> tuple[str, tuple]:
    """A row's sample id and what it says of the whole sample: ``(label, targets, split, labels, group)``."""
    sample_id = _first(row, columns.id)
    if sample_id is None:
        raise DataError(f"{where}: no sample id; add a 'sample_id' column")
    if not isinstance(sample_id, str):
        sample_id = _text(sample_id, where, "the sample id")
    label = row.get("label")
    if label == "" or label is None:
        label = None
    elif not isinstance(label, str):
        label = _text(label, where, "'label'")
    values = None
    if target_cols and (require_labels or all(row.get(c) not in (None, "") for c in target_cols)):
        values = {c: _parse_float(row.get(c), where, c) for c in target_cols}
    labels = row.get("labels")
    labels = None if labels is None else _multi_labels(labels, where)
    if require_labels and label is None and values is None and labels is None and not columns.per_image:
        raise DataError(f"{where}: sample {sample_id!r} has no 'label' (or 'labels', target or frame_label columns)")
    split = row.get("split") or None
    if split is not None and split not in SPLITS:
        raise DataError(f"{where}: split {_short.repr(split)} is not one of {', '.join(SPLITS)}")
    group = row.get(group_column)
    group = None if group in (None, "") else _text(group, where, f"the group ({group_column!r})")
    return sample_id, (label, values, split, labels, group)


def _row_images(
    row: dict, where: str, sample_id: str, require_labels: bool, single: Any, columns: _Columns
) -> tuple[list[tuple], bool]:
    """The images a row names (``single``: its path value), each ``(index, path as written, per-image
    target)``, and whether they came as a 'paths' list (a sample given by such a row has that one row only)."""
    many = _first(row, columns.paths) if columns.paths else None
    if single is None and many is None:
        raise DataError(f"{where}: sample {sample_id!r} has no 'path' (or 'paths') value")
    if many is not None:
        rel_paths = _parse_paths(many, where)
        if not rel_paths:
            raise DataError(f"{where}: sample {sample_id!r} has no image path in its 'paths' value")
        payloads = _packed_frame_labels(row, len(rel_paths), where)
        return list(zip(map(float, range(len(rel_paths))), rel_paths, payloads)), True
    index = row.get("index")
    index = None if index in (None, "") else _parse_float(index, where, "index")
    rel = single if isinstance(single, str) else _text(single, where, "'path'")
    return [(index, rel, _frame_payload(row, where, require_labels, columns.frame_targets))], False


def _assemble(path: Path, frames: dict[str, list[tuple]], meta: dict[str, tuple], lines: dict[str, int],
              videos: dict[str, VideoClip]) -> list[Sample]:
    """The samples, each with its images in order and its per-image targets aligned with them."""
    name_key = functools.lru_cache(maxsize=None)(natural_key)
    samples = []
    for sample_id, entries in frames.items():
        ordered = _order_frames(path, sample_id, entries, name_key)
        sample = Sample(
            id=sample_id,
            frames=[ref for ref, _ in ordered],
            **dict(zip(_META, meta[sample_id])),
            source=f"{shown(path)} line {lines[sample_id]}",
            video=videos.get(sample_id),
        )
        payloads = [payload for _, payload in ordered]
        if any(p is not None and p[0] is not None for p in payloads):
            sample.frame_labels = [p[0] if p else None for p in payloads]
        if any(p is not None and p[1] is not None for p in payloads):
            sample.frame_targets = [p[1] if p else None for p in payloads]
        samples.append(sample)
    return samples


def _multi_labels(value: Any, where: str) -> list[str] | None:
    """The 'labels' column: ``;``-separated (or a JSON list); an empty cell is a sample with no label on."""
    if value is None:
        return None
    if isinstance(value, list):
        items = [_text(v, where, "a label in 'labels'") for v in value]
    elif isinstance(value, str):
        items = [v.strip() for v in value.split(";")]
    else:
        items = [_text(value, where, "'labels'")]
    return sorted({v for v in items if v})


def _frame_payload(row: dict[str, Any], where: str, required: bool, columns: list[str]) -> tuple | None:
    """(class, {target: value}) of one image row for per-image tasks (``columns``: its per-image
    regression columns); None when the row has neither."""
    label = row.get(_FRAME_LABEL)
    label = None if label in (None, "") else _text(label, where, f"'{_FRAME_LABEL}'")
    values = None
    if columns and (required or all(row.get(c) not in (None, "") for c in columns)):
        values = {c: _parse_float(row.get(c), where, c) for c in columns}
    return None if label is None and values is None else (label, values)


def _packed_frame_labels(row: dict[str, Any], count: int, where: str) -> list[tuple | None]:
    """Per-image classes of a one-row sample: a ``frame_labels`` list aligned with its ``paths``."""
    value = row.get(_FRAME_LABELS)
    if value in (None, "", []):
        return [None] * count
    labels = _parse_paths(value, where)  # the same ;-separated / JSON-list syntax as 'paths'
    if len(labels) != count:
        raise DataError(f"{where}: '{_FRAME_LABELS}' has {len(labels)} labels for {count} paths; give one per image")
    return [(label, None) for label in labels]


def _order_frames(path: Path, sample_id: str, entries: list[tuple], name_key=natural_key) -> list[tuple]:
    """``(image, per-image target)`` by ``index`` when every row has one, else by natural file-name order."""
    with_index = [e for e in entries if e[0] is not None]
    if with_index and len(with_index) != len(entries):
        raise DataError(f"{shown(path)}: sample {sample_id!r}: some rows have an 'index' and some do not; give all or none")
    if with_index:
        seen: dict[float, int] = {}
        for index, ln, *_ in entries:
            if index in seen:
                raise DataError(f"{shown(path)} line {ln}: sample {sample_id!r} repeats index {index:g} (line {seen[index]})")
            seen[index] = ln
        return [(ref, payload) for _, _, ref, payload in sorted(entries, key=lambda e: e[0])]
    return sorted(((ref, payload) for _, _, ref, payload in entries), key=lambda e: name_key(e[0].path.name))
