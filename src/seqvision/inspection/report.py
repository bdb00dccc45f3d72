"""What ``seqvision inspect`` prints and writes: a few summary lines, one verdict line per finding,
``inspect.json`` (every figure, for scripts) and ``inspect.html`` (:mod:`seqvision.inspection.page`)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqvision.data.manifest import gc_paused
from seqvision.inspection.checks import Finding, find_all, strict_failures
from seqvision.inspection.facts import Inspection, histogram, lengths_summary
from seqvision.io import atomic_write_text


@dataclass
class InspectReport:
    """An inspection, its findings, and the files written."""

    inspection: Inspection
    findings: list[Finding]
    files: list[Path]

    @property
    def failed_strict(self) -> bool:
        """Whether ``--strict`` fails: a leak, or an unreadable or truncated file."""
        return bool(strict_failures(self.findings))


def write_report(inspection: Inspection, out: str | Path | None) -> InspectReport:
    """Find the leaks and problems and, with ``out``, write ``out/inspect.html`` and ``out/inspect.json``."""
    from seqvision.inspection.page import render_page

    files: list[Path] = []
    with gc_paused():  # passes over a big index: see inspect_data
        findings = find_all(inspection)
        if out is not None:
            out = Path(out)
            page, data = out / "inspect.html", out / "inspect.json"
            atomic_write_text(page, render_page(inspection, findings))
            atomic_write_text(data, json.dumps(to_json(inspection, findings), indent=1, sort_keys=True))
            files = [page, data]
    return InspectReport(inspection, findings, files)


def image_formats(inspection: Inspection) -> Counter:
    return Counter(h[0] for h in inspection.headers.values() if h is not None)


def image_sizes(inspection: Inspection) -> Counter:
    return Counter(f"{h[1]}x{h[2]}" for h in inspection.headers.values() if h is not None)


def headers_note(inspection: Inspection) -> str:
    """How many image files the sizes and formats come from, in words."""
    total = len(inspection.files)
    if inspection.checked:
        bad = sum(1 for p in inspection.headers if p in inspection.unreadable)
        return f"{len(inspection.headers) - bad:,} of {total:,} image files decoded, {bad:,} unreadable"
    read = sum(1 for h in inspection.headers.values() if h is not None)
    spread = "" if len(inspection.headers) >= total else ", evenly spread (--max-headers)"
    return f"headers of {read:,} of {total:,} image files read{spread}"


def summary_lines(report: InspectReport) -> list[str]:
    """The printed summary: sizes, the split, lengths, files, then one verdict line per finding."""
    r = report.inspection
    labels = r.per_label
    splits: Counter = Counter()
    for by in labels.values():
        splits.update(by)
    lengths = [r.frames_of.get(s.id, 0) for s in r.samples]
    lines = [
        f"{r.source} ({r.layout}): {len(r.samples):,} samples, {len(labels)} labels"
        + (f", task {r.task}" if r.task else "") + f", {len(r.files):,} image files, {len(r.videos):,} videos",
        f"split: {r.split_origin or 'none'}: " + ", ".join(f"{name} {n:,}" for name, n in splits.items()),
        "per label: " + "; ".join(f"{label}: " + ", ".join(f"{sp} {n:,}" for sp, n in by.items())
                                  for label, by in list(labels.items())[:8]) + (" ..." if len(labels) > 8 else ""),
        "groups per label: " + ", ".join(f"{k} {v:,}" for k, v in list(r.groups_per_label.items())[:8]),
        f"frames per sample: {lengths_summary(lengths)}",
    ]
    if r.files:
        formats = ", ".join(f"{k} {v:,}" for k, v in image_formats(r).most_common(4))
        sizes = ", ".join(f"{k} {v:,}" for k, v in image_sizes(r).most_common(4))
        lines.append(f"images: {formats or 'none readable'}; sizes {sizes or '-'} ({headers_note(r)})")
    if r.videos:
        durations = sorted(d for d, _ in r.videos.values())
        rates = ", ".join(f"{k:g} fps {v}" for k, v in Counter(round(f, 3) for _, f in r.videos.values()).most_common(3))
        lines.append(f"videos: {durations[0]:.2f}-{durations[-1]:.2f} s; {rates}")
    lines.append(r.hash_note)
    if not report.findings:
        lines.append("no leak or problem found")
    for f in report.findings:
        lines += [f.line(), *(f"    e.g. {e}" for e in f.examples[:2])]
    return lines


def to_json(inspection: Inspection, findings: list[Finding]) -> dict[str, Any]:
    """Every figure of the inspection as plain JSON values."""
    r = inspection
    return {
        "source": r.source, "layout": r.layout, "task": r.task, "samples": len(r.samples), "image_files": len(r.files),
        "videos": len(r.videos), "split_origin": r.split_origin, "options": r.options,
        "per_label": r.per_label, "groups_per_label": r.groups_per_label,
        "frames_per_sample": histogram([r.frames_of.get(s.id, 0) for s in r.samples]),
        "image_formats": dict(image_formats(r)), "image_sizes": dict(image_sizes(r)), "headers": headers_note(r),
        "video_files": {str(p): {"seconds": d, "fps": f} for p, (d, f) in r.videos.items()},
        "hashes": r.hash_note, "seconds": r.seconds,
        "findings": [{"kind": f.kind, "title": f.title, "count": f.count, "verdict": f.verdict, "examples": f.examples,
                      "strict": f.strict} for f in findings],
        "strict_failures": len(strict_failures(findings)),
    }
