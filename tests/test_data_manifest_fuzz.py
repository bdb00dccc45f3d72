"""Property-based fuzzing of manifest discovery (CSV / JSONL).

Two properties:
  * robustness: whatever the bytes of a manifest, ``discover()`` returns samples that each have >= 1 frame,
    all existing files, or raises ``DataError`` naming the manifest; never any other exception type.
  * correctness: a valid generated manifest (known ids, labels, splits, paths) gives exactly the expected
    samples, in order of first appearance, frames in ``index`` order when given, the order of a ``paths``
    list, else natural file-name order.

Discovery never reads pixels, so the "images" are files of a few bytes with awkward names (spaces,
unicode, commas, quotes, sub-folders).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from seqvision.data.discovery import discover
from seqvision.data.samples import SPLITS, Sample, natural_key
from seqvision.errors import DataError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Real files (relative to the manifest's folder). No name holds ';' or starts with '[' (a CSV 'paths' cell is
# ';'-separated, and one starting with '[' is read as JSON), nor starts/ends with whitespace (cells are stripped).
POOL = [
    "a.png", "b 2.png", "frame 10.jpg", "frame 9.jpg", "frame 010b.jpg", "é café.png", "日本 3.png", "x,y.png",
    'q"uote.png', "back\\slash.png", "#hash.png", "Ω.TIF", "emoji 😀.png", "dots.in.name.png", "1", "noext",
    "sub dir/ü 1.png", "sub dir/deeper/n 02.png", "sub dir/deeper/N 2.png",
]
# Paths that are not a file: missing, a folder, too long, embedded NUL, unencodable, outside, absolute.
BAD_PATHS = [
    "missing.png", "sub dir", "sub dir/", "../outside.png", "a.png/x", "x" * 300, "d/" * 2000 + "f.png", "\x00.png",
    "a\x00.png", "\ud800.png", "/nonexistent/abs.png", " ", ".", "..", "[not json", "a.png;b 2.png", "a.png;;",
]
ID_COLS = ("sample_id", "sample", "id")
PATH_COLS = ("path", "image", "file")
PATHS_COLS = ("paths", "images", "files")
RESERVED = set(ID_COLS + PATH_COLS + PATHS_COLS + ("label", "index", "split"))


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("manifest fuzz ü")  # a space and unicode in the folder itself
    for name in POOL:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"\x89PNG not really")
    return root


def write(root: Path, fmt: str, data: bytes) -> Path:
    path = root / f"m.{fmt}"
    path.write_bytes(data)
    return path


def check_robust(manifest: Path, **kwargs) -> list[Sample] | None:
    """The robustness property; returns the samples, or None when discover raised DataError."""
    try:
        samples = discover(manifest, **kwargs)
    except DataError as exc:
        assert manifest.name in str(exc), f"the message does not name the manifest: {exc}"
        return None
    assert isinstance(samples, list) and samples
    for s in samples:
        assert isinstance(s, Sample)
        assert len(s.frames) >= 1, s
        assert all(f.path.is_file() for f in s.frames), s
    assert len({s.id for s in samples}) == len(samples)
    return samples


# ------------------------------------------------------------------------------------------ generators

NAME = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=8).filter(lambda s: s == s.strip())
TEXT = st.text(max_size=12)  # any text: control characters, quotes, commas, newlines, empty
NUMBER_TEXT = st.sampled_from(["0", "-1", "1.5", "1e400", "-1e400", "nan", "NaN", "inf", "-Infinity", "9" * 5000,
                               "0x10", "1_0", "", " ", "١٢", "3.0", "+2", "1e-400"])
EXTRA_COL = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=6).filter(
    lambda s: s == s.strip() and s not in RESERVED and not s.startswith("target"))


class P:
    """A path in a generated spec: ``name`` relative to the manifest folder, written absolute or not."""

    def __init__(self, name: str, absolute: bool):
        self.name, self.absolute = name, absolute

    def render(self, base: Path) -> str:
        return str(base / self.name) if self.absolute else self.name


@st.composite
def valid_specs(draw):
    """(spec, expected): a valid manifest and the samples it must give, as (id, label, split, [names])."""
    fmt = draw(st.sampled_from(["csv", "jsonl"]))
    id_col, path_col, paths_col = (draw(st.sampled_from(c)) for c in (ID_COLS, PATH_COLS, PATHS_COLS))
    with_split = draw(st.booleans())
    extras = draw(st.lists(EXTRA_COL, max_size=2, unique=True))
    ids = draw(st.lists(NAME | st.integers(0, 10**6).map(str), min_size=1, max_size=5, unique=True))
    rows, expected = [], {}
    for sid in ids:
        label = draw(NAME | st.integers(-5, 99).map(str))
        split = draw(st.sampled_from(SPLITS)) if with_split else None
        files = draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=5))
        mode = draw(st.sampled_from(["indexed", "natural", "packed"]))
        common = {id_col: sid, "label": label, **({"split": split} if with_split else {})}
        if fmt == "jsonl" and sid.isascii() and sid.isdecimal() and str(int(sid)) == sid and draw(st.booleans()):
            common[id_col] = int(sid)  # a number where a string is expected
        for col in extras:
            common[col] = draw(TEXT)
        absolute = st.booleans()
        if mode == "packed":
            rows.append({**common, paths_col: [P(f, draw(absolute)) for f in files]})
            order = files
        elif mode == "indexed":
            indices = draw(st.lists(st.integers(-10**9, 10**9) | st.integers(0, 50).map(lambda i: i + 0.5),
                                    min_size=len(files), max_size=len(files), unique=True))
            for f, i in zip(files, indices):
                rows.append({**common, path_col: P(f, draw(absolute)), "index": i})
            order = [f for _, f in sorted(zip(indices, files), key=lambda t: t[0])]
        else:
            for f in files:
                row = {**common, path_col: P(f, draw(absolute))}
                if draw(st.booleans()):
                    row["index"] = None if fmt == "jsonl" else ""  # present but empty: no index
                rows.append(row)
            order = sorted(files, key=lambda f: natural_key(Path(f).name))
        expected[sid] = (label, split, order)
    rows = draw(st.permutations(rows))
    firsts = list(dict.fromkeys(str(r[id_col]) for r in rows))
    spec = {
        "fmt": fmt, "rows": rows, "bom": draw(st.booleans()), "newline": draw(st.sampled_from(["\n", "\r\n"])),
        "int_style": draw(st.sampled_from(["plain", "float", "spaced"])),
    }
    return spec, [(sid, *expected[sid]) for sid in firsts]


def _cell(value, base: Path, int_style: str) -> str:
    if isinstance(value, P):
        return value.render(base)
    if isinstance(value, list):
        return ";".join(_cell(v, base, int_style) for v in value)
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return {"plain": str(value), "float": f"{value}.0", "spaced": f" {value} "}[int_style]
    return str(value)


def _json_value(value, base: Path):
    if isinstance(value, P):
        return value.render(base)
    if isinstance(value, list):
        return [_json_value(v, base) for v in value]
    return value


def render(spec: dict, base: Path) -> bytes:
    """The manifest's bytes; CSV columns are the union of the rows' keys (absent: an empty cell)."""
    rows = spec["rows"]
    if spec["fmt"] == "csv":
        columns = list(dict.fromkeys(k for r in rows for k in r))
        cells = [[_cell(r.get(c), base, spec["int_style"]) for c in columns] for r in rows]
        # csv.writer leaves a lone '\r' unquoted when the line ends with '\n' alone; readers end the row there
        bare_cr = any("\r" in c for c in [*columns, *(c for r in cells for c in r)])
        out = io.StringIO()
        writer = csv.writer(out, lineterminator=spec["newline"], quoting=csv.QUOTE_ALL if bare_cr else csv.QUOTE_MINIMAL)
        writer.writerows([columns, *cells])
        text = out.getvalue()
    else:
        text = "".join(json.dumps({k: _json_value(v, base) for k, v in r.items()}) + spec["newline"] for r in rows)
    return ("\ufeff" if spec["bom"] else "").encode() + text.encode("utf-8", "surrogatepass")


# ----------------------------------------------------------------------------------- correctness property


@FUZZ
@given(valid_specs())
def test_valid_manifests_give_the_expected_samples(pool_dir, case):
    spec, expected = case
    manifest = write(pool_dir, spec["fmt"], render(spec, pool_dir))
    samples = discover(manifest)
    got = [(s.id, s.label, s.split, [f.path for f in s.frames]) for s in samples]
    assert got == [(sid, label, split, [pool_dir / f for f in files]) for sid, label, split, files in expected]
    assert all(s.targets is None for s in samples)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(POOL), st.floats(-1e6, 1e6, allow_nan=False)), min_size=1, max_size=6,
                unique_by=lambda t: t[1]),
       st.sampled_from(["csv", "jsonl"]))
def test_regression_targets_and_float_index(pool_dir, frames, fmt):
    """target* columns (no label) become ``targets``; float indices order the frames."""
    rows = [{"sample_id": "s", "path": f, "index": i, "target_b": 2.5, "target_a": -1} for f, i in frames]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "index": repr(r["index"])} for r in rows)
        text = out.getvalue()
    else:
        text = "".join(json.dumps(r) + "\n" for r in rows)
    [sample] = discover(write(pool_dir, fmt, text.encode()))
    assert sample.targets == {"target_a": -1.0, "target_b": 2.5} and sample.label is None
    assert [f.path for f in sample.frames] == [pool_dir / f for f, _ in sorted(frames, key=lambda t: t[1])]


# ------------------------------------------------------------------------------------ robustness property

ENCODINGS = ["utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252", "utf-8-sig", "utf-7"]


@st.composite
def mutated(draw):
    """A valid manifest broken at the row level (missing / extra columns, empty cells, conflicting duplicates,
    bad numbers, bad paths), then maybe at the byte level (re-encoded, bytes inserted / flipped / cut)."""
    spec, _ = draw(valid_specs())
    rows = [dict(r) for r in spec["rows"]]
    for _ in range(draw(st.integers(1, 4))):
        r = draw(st.sampled_from(rows))
        what = draw(st.sampled_from(["drop", "drop_all", "blank", "dup", "index", "path", "extra", "split", "target"]))
        if what == "drop" and r:
            r.pop(draw(st.sampled_from(sorted(r))))
        elif what == "drop_all":
            col = draw(st.sampled_from(sorted({k for x in rows for k in x})))
            for x in rows:
                x.pop(col, None)
        elif what == "blank" and r:
            r[draw(st.sampled_from(sorted(r)))] = draw(st.sampled_from(["", None, " "]))
        elif what == "dup":
            rows.append({**r, "label": draw(NAME)})
        elif what == "index":
            r["index"] = draw(NUMBER_TEXT | st.sampled_from([math.nan, math.inf, -math.inf, 10**400, -(10**30), 0]))
        elif what == "path":
            key = draw(st.sampled_from(PATH_COLS + PATHS_COLS))
            bad = st.sampled_from(BAD_PATHS).map(lambda s: P(s, False))
            r[key] = draw(bad | st.lists(bad | st.sampled_from(POOL).map(lambda s: P(s, False)), max_size=3))
        elif what == "extra":
            r[draw(TEXT)] = draw(TEXT)
        elif what == "split":
            r["split"] = draw(st.sampled_from(["train", "TRAIN", "other", "", 1]))
        else:
            r[draw(st.sampled_from(["target", "target_x"]))] = draw(NUMBER_TEXT)
    spec = {**spec, "rows": rows}
    byte_ops = draw(st.lists(st.sampled_from(["encode", "insert", "flip", "cut", "none"]), max_size=2))
    return spec, byte_ops, draw(st.sampled_from(ENCODINGS)), draw(st.binary(min_size=1, max_size=8)), draw(st.integers(0, 10**6))


def break_bytes(data: bytes, ops: list[str], encoding: str, junk: bytes, at: int) -> bytes:
    for op in ops:
        pos = at % (len(data) + 1)
        if op == "encode":
            data = data.decode("utf-8", "replace").encode(encoding, "replace")
        elif op == "insert":
            data = data[:pos] + junk + data[pos:]
        elif op == "flip" and data:
            pos = min(pos, len(data) - 1)
            data = data[:pos] + bytes([data[pos] ^ junk[0]]) + data[pos + 1:]
        elif op == "cut":
            data = data[:pos]
    return data


@FUZZ
@given(mutated(), st.booleans())
@example((({"fmt": "jsonl", "rows": [{"sample_id": "a", "label": "x", "paths": []}], "bom": False, "newline": "\n",
            "int_style": "plain"}), [], "utf-8", b"x", 0), True)
def test_broken_manifests_give_samples_or_data_error(pool_dir, case, require_labels):
    spec, ops, encoding, junk, at = case
    data = break_bytes(render(spec, pool_dir), ops, encoding, junk, at)
    check_robust(write(pool_dir, spec["fmt"], data), require_labels=require_labels)


@FUZZ
@given(st.binary(max_size=600), st.sampled_from(["csv", "jsonl"]), st.sampled_from(["", "\ufeff", "\ufeff\ufeff"]))
@example(b"sample_id,label,path\na,cat,a.png\n".decode().encode("utf-16"), "csv", "")
@example(b"sample_id,label,path\n\xe9,cat,a.png\n", "csv", "")  # latin-1
@example(b"\x00\x00\x00", "csv", "")
@example(b'{"sample_id": "a", "label": "x", "path": "a.png"}\n', "jsonl", "\ufeff")
def test_arbitrary_bytes(pool_dir, data, fmt, bom):
    check_robust(write(pool_dir, fmt, bom.encode() + data))


JSON_SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(10**300, 10**400)
                | st.floats(allow_nan=True, allow_infinity=True) | TEXT | st.sampled_from(POOL + BAD_PATHS))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(TEXT, c, max_size=3),
                           max_leaves=8)
KEYS = st.sampled_from(sorted(RESERVED) + ["target", "target_y", "x"]) | TEXT
GOOD_ROW = st.fixed_dictionaries({"sample_id": st.sampled_from(["a", "b", 1]), "label": st.sampled_from(["x", "y"]),
                                  "path": st.sampled_from(POOL)})
RAW_LINES = st.sampled_from([
    "[" * 100_000 + "]" * 100_000,  # deeper than the recursion limit
    '{"sample_id": "a", "label": "x", "paths": ' + "[" * 5000 + "]" * 5000 + "}",
    '{"sample_id": "a", "label": "x", "path": "a.png", "index": ' + "9" * 5000 + "}",  # > int digit limit
    '{"sample_id": ' + "7" * 5000 + ', "label": "x", "path": "a.png"}',
    '{"sample_id": "a", "label": "x", "path": "a.png", "index": 1' + "0" * 400 + "}",  # float() overflows
    '{"sample_id": "a", "label": "x", "path": "a.png", "index": NaN}',
    '{"sample_id": "a", "label": "x", "path": "a.png", "index": -Infinity}',
    '{"sample_id": "a", "label": "x", "path": "' + "y" * 300 + '"}',  # file name too long
    '{"sample_id": "a", "label": "x", "path": "\\ud800"}',  # a lone surrogate
    '{"sample_id": "a", "label": "x", "path": "a\\u0000.png"}',
    '{"sample_id": "a", "label": "x", "paths": "[\\"a.png\\", [\\"b 2.png\\"]]"}',
    '{"sample_id": "a", "label": "x", "paths": []}',
    '{"sample_id": ["a"], "label": {"x": 1}, "path": ["a.png"]}',
    "not json", "", "   ", "null", "3", '"str"', "[]", "{}",
])


@FUZZ
@given(st.lists(st.one_of(
    GOOD_ROW.map(json.dumps),
    st.dictionaries(KEYS, JSON_VALUES, max_size=6).map(lambda d: json.dumps(d)),
    st.tuples(GOOD_ROW, st.dictionaries(KEYS, JSON_VALUES, max_size=3)).map(lambda t: json.dumps({**t[0], **t[1]})),
    JSON_VALUES.map(json.dumps),
    RAW_LINES,
), min_size=1, max_size=6), st.booleans())
def test_jsonl_arbitrary_values(pool_dir, lines, require_labels):
    check_robust(write(pool_dir, "jsonl", "\n".join(lines).encode("utf-8", "surrogatepass")),
                 require_labels=require_labels)


CELLS = st.sampled_from(POOL + BAD_PATHS) | NUMBER_TEXT | TEXT | st.sampled_from(
    ['["a.png", "b 2.png"]', '["a.png"', "[[[[", "[1, 2]", "[]", "a.png;b 2.png", ";", "x" * 200_000])


@FUZZ
@given(st.lists(KEYS, min_size=1, max_size=6), st.lists(st.lists(CELLS, max_size=7), max_size=6),
       st.booleans(), st.booleans())
def test_csv_arbitrary_cells(pool_dir, header, rows, quoted, require_labels):
    if quoted:
        out = io.StringIO()
        csv.writer(out).writerows([header, *rows])
        text = out.getvalue()
    else:  # no quoting at all: stray quotes, commas and newlines in cells break the structure
        text = "".join(",".join(r) + "\n" for r in [header, *rows])
    check_robust(write(pool_dir, "csv", text.encode("utf-8", "surrogatepass")), require_labels=require_labels)


# ------------------------------------------------------------------------------------ found by the fuzzer


@pytest.mark.parametrize(
    "fmt, body, message",
    [
        ("jsonl", "[" * 100_000, "line 1.*not valid JSON"),
        ("jsonl", '{"sample_id": "a", "label": "x", "path": "a.png", "index": ' + "9" * 5000 + "}", "line 1.*JSON"),
        ("jsonl", '{"sample_id": "a", "label": "x", "path": "a.png", "index": 1' + "0" * 400 + "}",
         "line 1.*'index'.*finite"),
        ("jsonl", '{"sample_id": "a", "label": "x", "path": "a.png", "index": NaN}', "line 1.*'index'.*finite"),
        ("csv", "sample_id,label,path\na,x," + "y" * 300 + "\n", "line 2.*sample 'a'.*does not exist"),
        ("jsonl", '{"sample_id": "a", "label": "x", "paths": []}', "line 1.*sample 'a'.*no 'path'"),
        ("csv", "sample_id,label,paths\na,x,;\n", "line 2.*sample 'a'.*no image"),
        ("jsonl", '{"sample_id": "a", "label": "x", "paths": ["a.png", ["b 2.png"]]}', "line 1.*'paths'.*strings"),
        ("jsonl", '{"sample_id": ["a"], "label": "x", "path": "a.png"}', "line 1.*sample id"),
        ("csv", "sample_id,label,path,paths\na,x,a.png,\na,x,,b 2.png\n", "line 3.*sample 'a'.*line 2"),
        ("csv", "sample_id,label,path,paths\na,x,,b 2.png\na,x,a.png,\n", "line 3.*sample 'a'.*line 2"),
    ],
)
def test_fuzz_findings_are_data_errors(pool_dir, fmt, body, message):
    with pytest.raises(DataError, match=message):
        discover(write(pool_dir, fmt, body.encode()))


def test_jsonl_with_a_byte_order_mark(pool_dir):
    manifest = write(pool_dir, "jsonl", '\ufeff{"sample_id": "a", "label": "x", "path": "a.png"}\n'.encode())
    assert [f.path.name for f in discover(manifest)[0].frames] == ["a.png"]


def test_natural_order_of_names_with_superscript_digits(pool_dir):
    (pool_dir / "n1²").write_bytes(b"x")
    manifest = write(pool_dir, "csv", "sample_id,label,path\na,x,n1²\na,x,a.png\n".encode())
    assert len(discover(manifest)[0].frames) == 2
