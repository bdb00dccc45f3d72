"""The outputs of ``seqvision compare``: a text table for the terminal, ``compare.html`` (self-contained,
drawn with the evaluation report's page and plots) and ``compare.md`` with its plots as PNG files beside it."""

from __future__ import annotations

from html import escape
from pathlib import Path

from seqvision.evaluation.compare import Comparison, curves, options_rows, per_class_rows, table_rows
from seqvision.evaluation.html_report import html_page, img_tag, line_plot_png
from seqvision.io import atomic_write, atomic_write_text


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, for the terminal."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(cell).ljust(w) for cell, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def summary_text(c: Comparison) -> str:
    """What the terminal shows: the runs table (best first) and the options that differ."""
    order = "lowest" if c.lower_is_better else "highest"
    parts = [f"{len(c.runs)} {c.runs[0].spec.task} runs, sorted by {c.sorted_by} {c.metric} ({order} first{_unranked(c)}):",
             text_table(*table_rows(c))]
    header, rows = options_rows(c)
    parts += ["", "options that differ:", text_table(header, rows)] if rows else ["", "no option differs"]
    return "\n".join(parts)


def write_comparison(c: Comparison, out_dir: str | Path) -> list[Path]:
    """``compare.html``, ``compare.md`` and the curves' PNG files (for the markdown) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = {name: line_plot_png(lines, xlabel="epoch", ylabel=name) for name, lines in curves(c).items()}
    written = []
    for name, png in plots.items():
        if png:
            path = out / f"{name}.png"
            atomic_write(path, lambda tmp, png=png: tmp.write_bytes(png))
            written.append(path)
    html, md = out / "compare.html", out / "compare.md"
    atomic_write_text(html, _html(c, plots))
    atomic_write_text(md, _markdown(c, plots))
    return [html, md, *written]


def _unranked(c: Comparison) -> str:
    """``; last, not ranked (no test figure): a, b`` when some runs have no figure on the split sorted on."""
    return f"; last, not ranked (no {c.sorted_by} figure): {', '.join(c.unranked)}" if c.unranked else ""


def _lead(c: Comparison) -> str:
    order = "lowest" if c.lower_is_better else "highest"
    everything = ("'all': an evaluation of every sample of its data, training samples included, so not comparable "
                  "with a held-out figure. " if "all" in c.splits else "")
    return (f"{len(c.runs)} {c.runs[0].spec.task} runs, sorted by {c.sorted_by} {c.metric}, {order} first{_unranked(c)}. "
            f"Each figure is on the split its column names; {everything}"
            f"Diagnostics, worst group and per-class figures are on each run's test split (val when it has none, "
            f"else the split it was evaluated on); "
            f"shuffled, reversed and middle: the same model on each sample's images shuffled, reversed, or its "
            f"middle image alone.")


# --- HTML ----------------------------------------------------------------------------------------------


def _html(c: Comparison, plots: dict[str, bytes | None]) -> str:
    header, rows = table_rows(c)
    parts = [f"<h1>seqvision compare: {len(c.runs)} runs</h1>", f'<p class="note">{escape(_lead(c))}</p>',
             f'<section id="runs"><h2>Runs</h2>{_html_table(header, rows, "runs")}</section>']
    header, rows = options_rows(c)
    parts.append('<section id="options"><h2>Options that differ</h2>'
                 + (_html_table(header, rows, "options") if rows else '<p class="note">no option differs</p>') + "</section>")
    curves_html = [img_tag(png, "image/png", name, "plot") if png else f'<p class="note">no {escape(name)} logged</p>'
                   for name, png in plots.items()]
    parts.append('<section id="curves"><h2>Learning curves</h2>' + "\n".join(curves_html) + "</section>")
    figure, header, rows = per_class_rows(c)
    parts.append(f'<section id="per-class"><h2>Per {escape(header[0])} {escape(figure)}</h2>{_html_table(header, rows, "per_class")}</section>')
    return html_page("seqvision compare", "\n".join(parts))


def _html_table(header: list[str], rows: list[list[str]], cls: str) -> str:
    head = "".join(f'<th class="name">{escape(h)}</th>' if i == 0 else f"<th>{escape(h)}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="name">{escape(cell)}</td>' if i == 0 else f"<td>{escape(cell)}</td>" for i, cell in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


# --- markdown ------------------------------------------------------------------------------------------


def _markdown(c: Comparison, plots: dict[str, bytes | None]) -> str:
    parts = [f"# seqvision compare: {len(c.runs)} runs", "", _lead(c), "", "## Runs", "", _md_table(*table_rows(c))]
    header, rows = options_rows(c)
    parts += ["", "## Options that differ", "", _md_table(header, rows) if rows else "No option differs."]
    parts += ["", "## Learning curves", ""]
    parts += [f"![{name}]({name}.png)" if png else f"No {name} logged." for name, png in plots.items()]
    figure, header, rows = per_class_rows(c)
    parts += ["", f"## Per {header[0]} {figure}", "", _md_table(header, rows), ""]
    return "\n".join(parts)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)
