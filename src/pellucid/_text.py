"""Numbers as text for people: shared by the reports (HTML) and the terminal."""

from __future__ import annotations

__all__ = ["duration"]


def duration(seconds: float, space: str = "\u00a0") -> str:
    """A human duration: ``420 ms``, ``2.8 s``, ``24 s``, ``1 min 36 s``, ``2 h 05 min``; ``space``
    joins each number to its unit (no-break by default, for HTML)."""
    if seconds != seconds:
        return "–"
    if seconds < 0.9995:
        return f"{seconds * 1000:.0f}{space}ms"
    if seconds < 9.95:
        return f"{seconds:.1f}{space}s"
    if seconds < 59.5:
        return f"{seconds:.0f}{space}s"
    s = int(round(seconds))
    if s < 3600:
        return f"{s // 60}{space}min {s % 60}{space}s"
    return f"{s // 3600}{space}h {s % 3600 // 60:02d}{space}min"
