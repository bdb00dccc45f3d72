"""``seqvision inspect``: what a data set holds and what is wrong with it, before any training.

:func:`inspect_data` indexes the data as ``train`` does and gathers its facts (reading headers, not
pixels, unless asked); :func:`write_report` finds the leaks and problems and writes the HTML page and JSON.
"""

from seqvision.inspection.checks import Finding
from seqvision.inspection.facts import Inspection, inspect_data
from seqvision.inspection.report import InspectReport, summary_lines, write_report

__all__ = ["Finding", "InspectReport", "Inspection", "inspect_data", "summary_lines", "write_report"]
