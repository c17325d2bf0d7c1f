"""What the measuring tools compute from a model's outputs (`timeline_vs_truth.py`), kept apart
from the scripts so that the tests check it.

The scripts run as `python tools/NAME.py`, which puts this folder first on `sys.path`; the tests
find it through pytest's `pythonpath` (pyproject.toml).
"""

from __future__ import annotations

from collections.abc import Sequence


def match_segments(found: Sequence[dict], truth: Sequence[dict], tolerance: float) -> list[bool]:
    """For every true segment ({"index", "start", "end"} in seconds), whether a found segment
    has its class and both ends within `tolerance` seconds of its ends (for a generated video
    whose segments are known). An end exactly one tolerance away counts: the times are sums of
    window strides and frame times in floats, so "exactly" is compared to a microsecond."""
    limit = tolerance + 1e-6
    return [
        any(
            f["index"] == t["index"]
            and abs(f["start"] - t["start"]) <= limit
            and abs(f["end"] - t["end"]) <= limit
            for f in found
        )
        for t in truth
    ]
