"""Manifest reading's shortcuts agree with what they stand for (the rows themselves: test_data_discovery)."""

from pathlib import Path

import pytest

from seqvision.data.manifest import _file_name, _may_name_video
from seqvision.data.samples import is_video_file, is_video_name


@pytest.mark.parametrize("text", ["a.mp4", "A.MP4", "dir/a.mp4", "a.mp4/", "a.mp4/.", "a.mp4/..", ".mp4", "dir/.mp4", "a.",
                                  "a.mp4.", "", "x.mp4/a.png", "a.png", "..mp4", "a..mp4", "dir.mp4/f", "a.ts", "./a.mkv"])
def test_a_row_names_a_video_exactly_when_pathlib_says_so(text):
    """The per-row shortcut (no Path made) agrees with ``is_video_file(Path(text))`` on awkward names."""
    truth = is_video_file(Path(text))
    assert is_video_name(_file_name(text)) == truth
    assert _may_name_video(text) or not truth  # the pre-check never turns a video away
