"""``inspect.html``: the inspection as one self-contained page, built like the evaluation report (its page
frame, thumbnails and escaping): verdicts first, then counts, lengths, files, videos and thumbnails."""

from __future__ import annotations

from collections import Counter
from html import escape

from seqvision.evaluation.html_report import count_note, html_page, html_table, thumb_figure
from seqvision.inspection.checks import Finding
from seqvision.inspection.facts import THUMB_LABELS, Inspection, histogram
from seqvision.inspection.report import headers_note, image_formats, image_sizes

_STYLE = (  # added to the report's own CSS: verdict colours and the histogram bars
    "<style>li.leak{color:#a00}li.problem{color:#a60}.hbar{height:10px;background:#1f77b4;display:inline-block}"
    "td.hist{text-align:left;min-width:200px}table.overview td{text-align:left}</style>"
)


def render_page(inspection: Inspection, findings: list[Finding]) -> str:
    """The whole page as text (escaped: sample ids, labels and paths are shown, never run)."""
    r = inspection
    title = f"Inspection of {r.source}"
    parts = [_STYLE, f"<h1>{escape(title)}</h1>", _overview(r), _findings(findings), _labels(r), _lengths(r)]
    if r.files:
        parts.append(_images(r))
    if r.videos:
        parts.append(_videos(r))
    parts.append(_thumbnails(r))
    return html_page(title, "\n".join(parts))


def _bars(cls: str, head: str, rows: list[tuple[str, int]]) -> str:
    """A histogram as a table: a name, a count and a bar as long as the count (relative to the largest)."""
    top = max((n for _, n in rows), default=1) or 1
    body = "".join(f'<tr><td class="name">{escape(name)}</td><td>{n:,}</td><td class="hist"><span class="hbar" '
                   f'style="width:{200 * n / top:.0f}px"></span></td></tr>' for name, n in rows)
    return f'<table class="{cls}"><tr><th class="name">{escape(head)}</th><th>count</th><th></th></tr>{body}</table>'


def _overview(r: Inspection) -> str:
    rows = [
        ["data", escape(f"{r.source} ({r.layout})")], ["samples", f"{len(r.samples):,}"], ["task", escape(r.task or "-")],
        ["image files", f"{len(r.files):,}"], ["video files", f"{len(r.videos):,}"], ["split", escape(r.split_origin or "none")],
        ["content hashes", escape(r.hash_note)],
        ["options", escape(", ".join(f"{k}={v}" for k, v in r.options.items()))],
        ["time", escape(", ".join(f"{k} {v:.2f} s" for k, v in r.seconds.items()))],
    ]
    return f'<section id="overview"><h2>Overview</h2>{html_table("overview", ["what", "value"], rows)}</section>'


def _findings(findings: list[Finding]) -> str:
    if not findings:
        return '<section id="findings"><h2>Verdict</h2><p class="ok">no leak or problem found</p></section>'
    items = []
    for f in findings:
        examples = "".join(f"<li>{escape(e)}</li>" for e in f.examples)
        items.append(f'<li class="{f.kind}"><b>{escape(f.kind)}: {escape(f.title)} ({f.count:,})</b>: {escape(f.verdict)}'
                     f'<ul class="examples">{examples}</ul></li>')
    return f'<section id="findings"><h2>Verdict</h2><ul class="findings">{"".join(items)}</ul></section>'


def _labels(r: Inspection) -> str:
    table = r.per_label
    splits = list(dict.fromkeys(sp for by in table.values() for sp in by))
    groups = r.groups_per_label
    rows = [[escape(label), *(f"{by.get(sp, 0):,}" for sp in splits), f"{sum(by.values()):,}", f"{groups[label]:,}"]
            for label, by in table.items()]
    head = ["label", *map(escape, splits), "samples", "groups"]
    return (f'<section id="labels"><h2>Samples per label and split</h2><p class="note">{escape(r.split_origin)}; '
            f'"none": left out as train would (too short or unreadable)</p>{html_table("labels", head, rows)}</section>')


def _lengths(r: Inspection) -> str:
    rows = histogram([r.frames_of.get(s.id, 0) for s in r.samples])
    return f'<section id="lengths"><h2>Frames per sample</h2>{_bars("lengths", "frames", rows)}</section>'


def _images(r: Inspection) -> str:
    formats = _bars("formats", "format", image_formats(r).most_common())
    sizes = _bars("sizes", "width x height", image_sizes(r).most_common(20))
    return (f'<section id="images"><h2>Image files</h2><p class="note">{escape(headers_note(r))}</p>'
            f"<h3>Formats</h3>{formats}<h3>Sizes (most common 20)</h3>{sizes}</section>")


def _videos(r: Inspection) -> str:
    durations = _bars("durations", "seconds", histogram([d for d, _ in r.videos.values()]))
    rates = Counter(round(f, 3) for _, f in r.videos.values())
    rates = _bars("fps", "frames per second", [(f"{f:g}", rates[f]) for f in sorted(rates)])
    return f'<section id="videos"><h2>Videos</h2><h3>Durations</h3>{durations}<h3>Frame rates</h3>{rates}</section>'


def _thumbnails(r: Inspection) -> str:
    rows = []
    for strip in r.thumbnails:
        if strip.error:
            images = f'<span class="note">{escape(strip.error)}</span>'
        else:
            images = "".join(thumb_figure(img, strip.sample_id, i) for img, i in zip(strip.images, strip.indices))
        rows.append(f'<tr><td class="name">{escape(strip.label)}</td><td class="name id">{escape(strip.sample_id)}'
                    f"{count_note(strip.total)}</td><td>{escape(strip.split)}</td>"
                    f'<td class="name"><div class="thumbs">{images}</div></td></tr>')
    head = '<tr><th class="name">label</th><th class="name">sample</th><th>split</th><th class="name">images, in order</th></tr>'
    labels = len(r.per_label)
    which = f"the first {THUMB_LABELS} of {labels} labels" if labels > THUMB_LABELS else "per label"
    return (f'<section id="thumbnails"><h2>Samples, in order</h2><p class="note">a few samples {which}, each in '
            f'the order the model reads (#: the frame\'s index)</p><table class="thumbnails">{head}{"".join(rows)}</table></section>')
