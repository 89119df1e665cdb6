"""What the curation job's and the training loops' progress lines share."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """``4m12s``, ``1h05m``, ``9s`` (an ETA or an elapsed time, to the second)."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
