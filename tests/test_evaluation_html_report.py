"""write_html_report: one self-contained, escaped HTML file, checked in Python and in headless Chromium."""

from __future__ import annotations

import base64
import re
import subprocess
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from seqvision.errors import DataError
from seqvision.evaluation.html_report import AttentionCase, ErrorCase, metrics_logs, read_history, write_html_report
from conftest import write_image

CHROMIUM = Path("/usr/bin/chromium")
EVIL = "<script>alert(1)</script>"
EVIL_ID = '<img src=x onerror="document.body.dataset.pwned=1">'

HISTORY_V0 = """epoch,step,train_loss,val_acc,val_f1,val_loss
0,0,1.10,,,
0,1,0.95,,,
0,1,,0.50,0.40,0.90
1,3,0.80,,,
1,3,,0.60,0.55,0.80
"""
# version_1: resumed from the epoch-1 checkpoint (re-logs step 3), a column the first file lacks
HISTORY_V1 = """epoch,step,lr-AdamW,train_loss,val_acc,val_f1,val_loss
1,3,0.01,0.78,,,
2,5,0.01,0.60,,,
2,5,,,0.75,0.70,0.62
"""


def tags(html: str) -> list[tuple[str, dict]]:
    """Every start tag as the browser's tokenizer sees it: (name, attributes)."""
    found: list[tuple[str, dict]] = []
    parser = HTMLParser()
    parser.handle_starttag = lambda tag, attrs: found.append((tag, dict(attrs)))
    parser.feed(html)
    return found


def metrics() -> dict:
    names = ["cat", "dog", EVIL]
    return {
        "num_samples": 12,
        "accuracy": 0.75,
        "top2_accuracy": 0.9,
        "macro_f1": float("nan"),
        "per_class": {n: {"precision": 0.8, "recall": 0.7, "f1": 0.75, "support": 4} for n in names},
        "confusion_matrix": {"labels": names, "matrix": [[3, 1, 0], [0, 4, 0], [1, 1, 2]]},
    }


@pytest.fixture
def report(tmp_path) -> Path:
    v0, v1 = tmp_path / "version_0" / "metrics.csv", tmp_path / "version_1" / "metrics.csv"
    for path, text in ((v0, HISTORY_V0), (v1, HISTORY_V1)):
        path.parent.mkdir()
        path.write_text(text)
    files = [write_image(tmp_path / "frames" / f"f{t}.png", (30 * t, 100, 200 - 30 * t)) for t in range(3)]
    arrays = [np.full((24, 32, 3), 10 * t, dtype=np.uint8) for t in range(20)]  # 20 > 16: subsampled
    errors = [
        ErrorCase(sample_id="files/s0", true_label="cat", predicted_label=EVIL, confidence=0.61, images=files),
        ErrorCase(sample_id=EVIL_ID, true_label=EVIL, predicted_label="dog", confidence=0.97, images=arrays),
    ]
    frames = [np.random.default_rng(t).integers(0, 255, (3, 16, 16), dtype=np.uint8) for t in range(4)]  # CHW
    attention = [AttentionCase(sample_id="att/s1", images=frames, weights=[0.1, 0.6, 0.2, 0.1], label="true: dog")]
    return write_html_report(
        tmp_path / "out" / "report.html", metrics=metrics(), title=f"Eval {EVIL}", history_csv=[v0, v1], errors=errors, attention=attention
    )


def test_report_is_self_contained_and_escaped(report):
    html = report.read_text()
    assert not list(report.parent.glob(".*tmp"))  # atomic write left no temp file
    parsed = tags(html)
    urls = [a[k] for _, a in parsed for k in ("src", "href") if k in a]
    assert urls and all(u.startswith("data:") for u in urls), [u[:40] for u in urls if not u.startswith("data:")]
    assert not any(k.startswith("on") for _, a in parsed for k in a)  # no event-handler attribute anywhere
    assert "http://" not in html and "https://" not in html
    assert EVIL not in html and EVIL_ID not in html
    assert escape(EVIL) in html and escape(EVIL_ID) in html
    assert [t for t, _ in parsed].count("script") == 1  # only the page's own image check
    # 1 confusion plot + 2 curve plots + 3 file thumbnails + 16 of 20 arrays + 4 attention frames
    assert [t for t, _ in parsed].count("img") == 1 + 2 + 3 + 16 + 4
    assert "16 of 20 images shown" in html
    assert html.index(escape(EVIL_ID)) < html.index("files/s0")  # most confident error first
    assert ">nan<" in html  # NaN metric shown, not crashed on


def test_attention_weights_must_match_images():
    with pytest.raises(DataError, match="2 weights for 3 images"):
        AttentionCase(sample_id="s", images=[np.zeros((4, 4, 3), np.uint8)] * 3, weights=[0.5, 0.5])


def test_bad_thumbnails(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    ok = ErrorCase(sample_id="s", true_label="a", predicted_label="b", confidence=0.9, images=[broken])
    html = write_html_report(tmp_path / "r.html", metrics={"num_samples": 1}, title="t", errors=[ok]).read_text()
    assert "unreadable" in html and "img" not in [t for t, _ in tags(html)]  # one bad file does not cost the report
    floats = ErrorCase(sample_id="s9", true_label="a", predicted_label="b", confidence=0.9, images=[np.zeros((4, 4, 3))])
    with pytest.raises(DataError, match="s9.*uint8"):
        write_html_report(tmp_path / "r2.html", metrics={"num_samples": 1}, title="t", errors=[floats])
    assert not (tmp_path / "r2.html").exists()


def test_the_strip_helpers_other_pages_build_on(tmp_path):
    """thumb_figure, count_note and html_table are public: the inspection page builds its strips and tables
    with them (the same look, one place to change it)."""
    from seqvision.evaluation.html_report import MAX_THUMBS, count_note, html_table, thumb_figure

    figure = thumb_figure(np.zeros((8, 8, 3), np.uint8), EVIL_ID, 2, " caption")
    assert figure.startswith("<figure><img") and figure.endswith("#2 caption</figure>") and EVIL_ID not in figure
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert 'class="missing"' in thumb_figure(tmp_path / "broken.png", "s", 0)
    assert count_note(MAX_THUMBS) == "" and f"{MAX_THUMBS} of {MAX_THUMBS + 5} images shown" in count_note(MAX_THUMBS + 5)
    table = html_table("t", ["name", "<i>n</i>"], [["a", "<b>1</b>"]])
    assert table == ('<table class="t"><tr><th class="name">name</th><th><i>n</i></th></tr>'
                     '<tr><td class="name">a</td><td><b>1</b></td></tr></table>')  # cells are HTML: the caller escapes


def test_regression_metrics_and_missing_history(tmp_path):
    m = {"num_samples": 3, "mae": 0.5, "rmse": 0.7, "r2": 0.1, "per_target": {"speed": {"mae": 0.5, "rmse": 0.7, "r2": 0.1}}}
    html = write_html_report(tmp_path / "r.html", metrics=m, title="reg", history_csv=[tmp_path / "nope.csv"]).read_text()
    assert 'class="per_target"' in html and "speed" in html and 'class="confusion"' not in html
    assert "not read:" in html and "no losses logged" in html


def _chromium(tmp_path: Path, *args: str) -> str:
    if not CHROMIUM.exists():
        pytest.skip("headless Chromium not installed (apt-get install chromium)")
    cmd = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chrome-profile'}", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


def test_report_renders_in_chromium(report, tmp_path):
    dom = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", report.as_uri())
    check = re.search(r'id="image-check"[^>]*', dom)
    assert check, dom[-2000:]
    total = int(re.search(r'data-total="(\d+)"', check.group(0)).group(1))
    loaded = int(re.search(r'data-loaded="(\d+)"', check.group(0)).group(1))
    assert total == 26 and loaded == total  # every embedded image decoded
    assert "data-pwned" not in dom  # the escaped <img onerror> in a sample id never became an element
    for table in ("metrics", "per_class", "confusion", "errors", "attention"):
        body = re.search(rf'<table class="{table}">(.*?)</table>', dom, re.S)
        assert body and body.group(1).count("<tr>") >= 2, table  # a header row and data rows
    assert EVIL in dom.replace("&lt;", "<").replace("&gt;", ">")  # shown as text


def test_confusion_matrix_png_takes_class_names_matplotlib_would_parse_as_tex(tmp_path):
    from seqvision.evaluation.report import confusion_matrix_png

    png = confusion_matrix_png([[1, 0], [0, 1]], ["$a$", "price $5 \\bad{$"])  # raised ValueError as TeX
    assert png.startswith(b"\x89PNG")
    # the report embeds the PNG it is given instead of drawing the plot a second time
    out = write_html_report(tmp_path / "r.html", metrics={"confusion_matrix": {"labels": ["a", "b"], "matrix": [[1, 0], [0, 1]]}},
                            title="t", confusion_png=png)
    assert base64.b64encode(png).decode() in out.read_text()


def test_a_run_resumed_ten_times_reads_its_logs_in_number_order(tmp_path):
    """version_10 is newer than version_2: read after it, so its later values win in the curves."""
    for n in (0, 2, 10, 1):
        log = tmp_path / "logs" / f"version_{n}" / "metrics.csv"
        log.parent.mkdir(parents=True)
        log.write_text(f"epoch,step,train_loss\n0,0,{n}\n")
    (tmp_path / "logs" / "version_x").mkdir()  # not a version Lightning writes: never read
    logs = metrics_logs(tmp_path)
    assert [p.parent.name for p in logs] == ["version_0", "version_1", "version_2", "version_10"]
    rows, missing = read_history(logs)
    assert [row["train_loss"] for row in rows] == ["0", "1", "2", "10"] and not missing
