"""One self-contained ``report.html``: metrics, curves, confident errors and attention weights.

Everything the page shows is inside the file (plots and thumbnails as base64 ``data:`` URIs, inline
CSS), so it opens offline and can be mailed or archived as one file. A Content-Security-Policy forbids
any network load and every script but the page's own image check, and all user data (sample ids,
class names) is HTML-escaped: a class named ``<script>`` is shown, never run.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import math
import re
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from seqvision.data.images import load_image
from seqvision.data.sampling import uniform_indices
from seqvision.errors import BadFileError, DataError
from seqvision.evaluation.report import confusion_matrix_png
from seqvision.io import atomic_write_text

# A thumbnail source: a path to an image file, or a decoded uint8 image (H, W, 3), (3, H, W) or (H, W).
Thumbnail = Union[str, Path, np.ndarray]

THUMB_HEIGHT = 64  # px; enough to recognise a frame, small enough for 16 per row
MAX_THUMBS = 16  # per sample; longer samples show evenly spaced images (their indices are printed)


@dataclass
class ErrorCase:
    """A wrongly predicted sample, shown as one row with its images in order."""

    sample_id: str
    true_label: str
    predicted_label: str
    confidence: float  # the model's probability for ``predicted_label``: high = confidently wrong
    images: Sequence[Thumbnail] = field(default_factory=list)  # in sample order; paths or uint8 arrays


@dataclass
class AttentionCase:
    """A sample and the attention weight its temporal head gave each image."""

    sample_id: str
    images: Sequence[Thumbnail]
    weights: Sequence[float]  # one per image, same order (normally summing to 1)
    label: str = ""  # optional caption, e.g. "true: a, predicted: b"

    def __post_init__(self) -> None:
        if len(self.weights) != len(self.images):
            raise DataError(
                f"attention case {self.sample_id!r}: {len(self.weights)} weights for {len(self.images)} images; "
                "pass exactly one weight per image, in the same order"
            )


def write_html_report(
    out_path: Path | str,
    *,
    metrics: dict,
    title: str,
    history_csv: list[Path] | None = None,
    errors: list[ErrorCase] | None = None,
    attention: list[AttentionCase] | None = None,
    confusion_png: bytes | None = None,
    run: dict[str, str] | None = None,
    diagnostics: dict | None = None,
    diagnostics_seconds: float | None = None,
) -> Path:
    """Write a self-contained HTML evaluation report (atomically) and return its path.

    Args:
        out_path: the ``.html`` file to write; parent folders are created.
        metrics: the dict of :func:`classification_metrics` or :func:`regression_metrics`.
        title: the page heading.
        history_csv: Lightning ``metrics.csv`` files, oldest first (a resumed run's version_0,
            version_1, ...); they are concatenated and a later value for the same step wins.
        errors: wrongly predicted samples; shown most confident first.
        attention: samples with per-image attention weights.
        run: what was evaluated, in words (backbone, head, options, data, sizes, times, versions).
        diagnostics: the model on shuffled, reversed, single-image and mirrored variants, with findings.
    """
    parts = [f"<h1>{escape(title)}</h1>"]
    if run:
        rows = "".join(f'<tr><td class="name">{escape(k)}</td><td class="text">{escape(v)}</td></tr>' for k, v in run.items())
        parts.append(f'<section id="run"><h2>Run</h2><table class="run">{rows}</table></section>')
    parts.append(_metrics_section(metrics, confusion_png))
    if diagnostics:
        parts.append(_diagnostics_section(diagnostics, diagnostics_seconds))
    if history_csv:
        parts.append(_curves_section([Path(p) for p in history_csv]))
    if errors:
        parts.append(_errors_section(errors))
    if attention:
        parts.append(_attention_section(attention))
    out_path = Path(out_path)
    atomic_write_text(out_path, html_page(title, "\n".join(parts)))
    return out_path


# --- page -----------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#f3f3f3}td.name,th.name,td.text{text-align:left}td.id{max-width:14em;overflow-wrap:anywhere}
table.confusion td{min-width:2.5em;text-align:center}
.thumbs{display:flex;flex-wrap:wrap;gap:4px}
figure{margin:0;text-align:center;font-size:11px;color:#555}
figure img{height:64px;display:block;image-rendering:pixelated}
.bar{height:6px;background:#d62728;margin-top:2px}.missing{height:64px;width:64px;background:#eee;color:#a00}
img.plot{max-width:100%;margin-right:1em}.note{color:#777;font-style:italic}
"""

# Counts the images the browser decoded: a visible check for the reader, and what the tests assert on.
_SCRIPT = (
    "(function(){function check(){var imgs=document.images,ok=0;"
    "for(var i=0;i<imgs.length;i++){if(imgs[i].complete&&imgs[i].naturalWidth>0)ok++;}"
    "var el=document.getElementById('image-check');el.dataset.total=imgs.length;el.dataset.loaded=ok;"
    "el.textContent=ok+' of '+imgs.length+' images decoded';}"
    "if(document.readyState==='complete')check();else window.addEventListener('load',check);})();"
)


def html_page(title: str, body: str) -> str:
    """A whole self-contained page: ``body`` under ``title``, the CSS, the CSP and the image check."""
    script_hash = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
    csp = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n"
        '<footer><p id="image-check" class="note"></p></footer>\n'
        f"<script>{_SCRIPT}</script>\n</body></html>\n"
    )


def format_value(value: object) -> str:
    """A table cell's text: floats to 4 decimals, anything else escaped."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return escape(str(value))


def html_table(cls: str, head: list[str], rows: list[list[str]]) -> str:
    """A ``<table class=cls>`` whose header and cells are already HTML (escape text first); the first
    column is a name (left-aligned)."""
    header = "".join(f'<th class="name">{h}</th>' if i == 0 else f"<th>{h}</th>" for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f'<td class="name">{c}</td>' if i == 0 else f"<td>{c}</td>" for i, c in enumerate(row))
                   + "</tr>" for row in rows)
    return f'<table class="{cls}"><tr>{header}</tr>{body}</table>'


def img_tag(data: bytes, mime: str, alt: str, cls: str = "") -> str:
    """An ``<img>`` whose picture is inside the page (a base64 ``data:`` URI)."""
    klass = f' class="{cls}"' if cls else ""
    return f'<img{klass} alt="{escape(alt)}" src="data:{mime};base64,{base64.b64encode(data).decode()}">'


# --- metrics --------------------------------------------------------------------------------------


def _metrics_section(metrics: dict, confusion_png: bytes | None) -> str:
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    rows = "".join(f'<tr><td class="name">{escape(k)}</td><td>{format_value(v)}</td></tr>' for k, v in scalars.items())
    html = [f'<section id="metrics"><h2>Metrics</h2><table class="metrics"><tr><th class="name">metric</th><th>value</th></tr>{rows}</table>']
    for key, heading in (("per_class", "Per class"), ("per_target", "Per target"), ("per_group", "Per group (worst first)")):
        per = metrics.get(key)
        if per:
            columns = list(dict.fromkeys(c for stats in per.values() for c in stats))
            head = "".join(f"<th>{escape(c)}</th>" for c in columns)
            body = "".join(
                f'<tr><td class="name">{escape(str(name))}</td>' + "".join(f"<td>{format_value(stats.get(c, ''))}</td>" for c in columns) + "</tr>"
                for name, stats in per.items()
            )
            html.append(f'<h2>{heading}</h2><table class="{key}"><tr><th class="name">name</th>{head}</tr>{body}</table>')
    if metrics.get("confusion_matrix"):
        html.append(_confusion_html(metrics["confusion_matrix"]["labels"], metrics["confusion_matrix"]["matrix"], confusion_png))
    return "\n".join(html) + "</section>"


def _diagnostics_section(d: dict, seconds: float | None) -> str:
    key = d["metric"]
    move = d["change"]  # the task's measure of a variant's change (diagnostics.diagnose records it)
    what = {"normal": "as given", "shuffled": f"shuffled (mean of {d.get('shuffled', {}).get('draws', 1)} orders)",
            "reversed": "reversed", "middle": "the middle image alone", "mirrored": "mirrored left-right (CNN run again)"}
    rows = []
    for variant, label in what.items():
        if variant == "normal":
            rows.append(f'<tr><td class="name">{label}</td><td>{format_value(d["normal"])}</td><td></td></tr>')
        elif variant in d:
            v = d[variant]
            change = f"{100 * v[move]:.1f}%" if move == "changed" else format_value(v[move])
            rows.append(f'<tr><td class="name">{escape(label)}</td><td>{format_value(v[key])}</td><td>{change}</td></tr>')
    items = "".join(f"<li>{escape(f)}</li>" for f in d.get("findings", []))
    return (
        f'<section id="diagnostics"><h2>Does order matter? The same model on variants of each sample</h2>'
        f'<table class="diagnostics"><tr><th class="name">images</th><th>{escape(key)}</th>'
        f'<th>{"predictions changed" if move == "changed" else "mean absolute change"}</th></tr>{"".join(rows)}</table>'
        f'<ul class="findings">{items}</ul><p class="note">{escape(d.get("mode", ""))} diagnostics'
        + (f", {seconds:.2f} s" if seconds is not None else "") + '; only the mirrored variant runs the CNN again</p></section>'
    )


def _confusion_html(labels: list[str], matrix: list[list[int]], png: bytes | None) -> str:
    """The matrix as a shaded table (rows: true, columns: predicted) plus the plot (``png``, else drawn here)."""
    head = "".join(f"<th>{escape(str(lab))}</th>" for lab in labels)
    rows = []
    for i, (label, row) in enumerate(zip(labels, matrix)):
        total = max(sum(row), 1)
        cells = "".join(
            f'<td style="background:rgba(31,119,180,{0.85 * n / total:.2f})">{"<b>%d</b>" % n if i == j else n}</td>'
            for j, n in enumerate(row)
        )
        rows.append(f'<tr><th class="name">{escape(str(label))}</th>{cells}</tr>')
    table = f'<table class="confusion"><tr><th class="name">true \\ predicted</th>{head}</tr>{"".join(rows)}</table>'
    png = png if png is not None else confusion_matrix_png(matrix, labels)
    return f'<h2>Confusion matrix</h2>{table}\n{img_tag(png, "image/png", "confusion matrix", "plot")}'


# --- training curves ------------------------------------------------------------------------------


def metrics_logs(run: Path) -> list[Path]:
    """A run's Lightning CSV logs, oldest first: ``logs/version_0``, ``version_1``, ... in number order, so a
    run resumed ten times reads version_10 after version_2 (its later values win)."""
    def number(path: Path) -> int:
        found = re.fullmatch(r"version_(\d+)", path.parent.name)
        return int(found.group(1)) if found else -1

    return sorted(run.glob("logs/version_*/metrics.csv"), key=number)


def read_history(paths: list[Path]) -> tuple[list[dict[str, str]], list[str]]:
    """All rows of the CSV files in order, and a note for each file that could not be read."""
    rows: list[dict[str, str]] = []
    missing: list[str] = []
    for path in paths:
        try:
            with path.open(newline="") as f:
                rows.extend(csv.DictReader(f))
        except OSError as exc:
            missing.append(f"{path}: {exc.strerror or exc}")
    return rows, missing


def _series(rows: list[dict[str, str]], column: str, x: str) -> tuple[list[float], list[float]]:
    """``column`` against ``x``, empty cells skipped; a later row for the same x wins (resumed runs)."""
    points: dict[float, float] = {}
    for row in rows:
        try:
            points[float(row[x])] = float(row[column])
        except (KeyError, TypeError, ValueError):
            continue
    xs = sorted(points)
    return xs, [points[v] for v in xs]


def line_plot_png(lines: Sequence[tuple[str, list[float], list[float]]], *, xlabel: str, ylabel: str) -> bytes | None:
    """A line plot (PNG) of ``(label, xs, ys)`` series, one line each; None when no series has a point.
    Labels are shown as written (no TeX: a name with two "$" is not parsed)."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global figure state
    from matplotlib.ticker import MaxNLocator

    drawn = [(label, xs, ys) for label, xs, ys in lines if xs]
    if not drawn:
        return None
    with matplotlib.rc_context({"text.parse_math": False}):
        fig = Figure(figsize=(7, 3.5), dpi=100)
        ax = fig.add_subplot()
        for label, xs, ys in drawn:
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and steps are whole numbers
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    return buf.getvalue()


def _plot(rows: list[dict[str, str]], columns: list[str], x: str, ylabel: str) -> bytes | None:
    return line_plot_png([(column, *_series(rows, column, x)) for column in columns], xlabel=x, ylabel=ylabel)


def _curves_section(paths: list[Path]) -> str:
    rows, missing = read_history(paths)
    html = ['<section id="curves"><h2>Training curves</h2>']
    html += [f'<p class="note">not read: {escape(m)}</p>' for m in missing]
    columns = list(dict.fromkeys(c for row in rows for c in row if c))
    losses = [c for c in columns if "loss" in c]
    val = [c for c in columns if re.match(r"val[_/]", c) and "loss" not in c]
    plots = [
        (_plot(rows, losses, "step" if "step" in columns else "epoch", "loss"), "losses"),
        (_plot(rows, val, "epoch" if "epoch" in columns else "step", "value"), "validation metrics"),
    ]
    for png, name in plots:
        html.append(img_tag(png, "image/png", name, "plot") if png else f'<p class="note">no {name} logged</p>')
    return "\n".join(html) + "</section>"


# --- thumbnails -----------------------------------------------------------------------------------


def _chosen(n: int) -> list[int]:
    """At most MAX_THUMBS indices, evenly spread over ``range(n)``, first and last included."""
    return uniform_indices(n, MAX_THUMBS)


def _as_rgb(image: Thumbnail, sample_id: str) -> np.ndarray:
    """A path or array -> ``(H, W, 3)`` uint8; raises DataError naming the sample and the fix."""
    if isinstance(image, (str, Path)):
        return load_image(image).permute(1, 2, 0).numpy()
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # (3, H, W) -> (H, W, 3)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or array.dtype != np.uint8:
        raise DataError(
            f"sample {sample_id!r}: a thumbnail of shape {array.shape} and dtype {array.dtype} is not an image; "
            "pass a file path or a uint8 array (H, W, 3), e.g. (x * 255).clip(0, 255).astype(np.uint8)"
        )
    return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array[..., :3]


def thumb_figure(image: Thumbnail, sample_id: str, index: int, caption: str = "") -> str:
    """One ``<figure>``: the image shrunk to THUMB_HEIGHT (never enlarged) as a JPEG data URI."""
    from PIL import Image

    try:
        rgb = Image.fromarray(np.ascontiguousarray(_as_rgb(image, sample_id)))
    except BadFileError as exc:  # one unreadable file must not cost the whole report
        return f'<figure><div class="missing" title="{escape(str(exc))}">unreadable</div>#{index}{caption}</figure>'
    rgb.thumbnail((4 * THUMB_HEIGHT, THUMB_HEIGHT))
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=85)
    return f"<figure>{img_tag(buf.getvalue(), 'image/jpeg', f'{sample_id} image {index}')}#{index}{caption}</figure>"


def count_note(n: int) -> str:
    """Under a sample's name: how many of its ``n`` images its strip shows, when not all of them."""
    return f'<br><span class="note">{len(_chosen(n))} of {n} images shown</span>' if n > MAX_THUMBS else ""


def _errors_section(errors: list[ErrorCase]) -> str:
    rows = []
    for case in sorted(errors, key=lambda c: -c.confidence):
        thumbs = "".join(thumb_figure(case.images[i], case.sample_id, i) for i in _chosen(len(case.images)))
        rows.append(
            f'<tr><td class="name id">{escape(str(case.sample_id))}{count_note(len(case.images))}</td>'
            f'<td class="name">{escape(str(case.true_label))}</td><td class="name">{escape(str(case.predicted_label))}</td>'
            f'<td>{format_value(float(case.confidence))}</td><td class="name"><div class="thumbs">{thumbs}</div></td></tr>'
        )
    return (
        '<section id="errors"><h2>Most confident errors</h2><table class="errors">'
        '<tr><th class="name">sample</th><th class="name">true</th><th class="name">predicted</th>'
        f'<th>confidence</th><th class="name">images (in order)</th></tr>{"".join(rows)}</table></section>'
    )


def _attention_section(cases: list[AttentionCase]) -> str:
    rows = []
    for case in cases:
        weights = [float(w) for w in case.weights]
        top = max(weights, default=0.0) or 1.0  # bars relative to the largest weight of the sample
        thumbs = "".join(
            thumb_figure(case.images[i], case.sample_id, i, f' {weights[i]:.2f}<div class="bar" style="width:{100 * max(weights[i], 0) / top:.0f}%"></div>')
            for i in _chosen(len(case.images))
        )
        caption = f"<br>{escape(case.label)}" if case.label else ""
        rows.append(
            f'<tr><td class="name id">{escape(str(case.sample_id))}{caption}{count_note(len(case.images))}</td>'
            f'<td class="name"><div class="thumbs">{thumbs}</div></td></tr>'
        )
    return (
        '<section id="attention"><h2>Attention over images</h2><p class="note">bar length: weight relative to the '
        'largest in the sample</p><table class="attention"><tr><th class="name">sample</th>'
        f'<th class="name">images with their weights</th></tr>{"".join(rows)}</table></section>'
    )
