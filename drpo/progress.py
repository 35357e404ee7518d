"""Progress lines for logs without a progress bar (a workflow job's log file): how far, how fast, ETA."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """`1h02m03s`, `4m05s`, `12s`."""
    s = int(round(max(seconds, 0.0)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def rate_and_eta(done: int, total: int, seconds: float) -> str:
    """`2.5 s/step, ETA 4m10s` after `done` of `total` steps took `seconds`."""
    per = seconds / max(done, 1)
    return f"{per:.3g} s/step, ETA {duration(per * max(total - done, 0))}"
