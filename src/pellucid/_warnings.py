"""pellucid's own warnings, which a caller can collect per thread.

The app and the CLI show an explainer's construction notes (a coverage fallback, functional ReLUs
Captum cannot reach) beside its result. ``warnings.catch_warnings(record=True)`` would collect
them, but it swaps the process-wide filter list and ``showwarning`` and puts back what it saw on
entry: two such blocks in two threads, left out of order, leave a dead recorder installed and every
later warning of the process silently swallowed. :func:`warn` and :func:`recorded_warnings` keep
the recording in the calling thread instead and touch no process-wide state.

:func:`warn` also attributes each warning to the user's line: the first caller outside pellucid,
however deep inside pellucid it was raised (``warnings.warn``'s ``skip_file_prefixes`` does this
from Python 3.12 on).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from typing import Iterator

__all__ = ["recorded_warnings", "warn"]

_LOCAL = threading.local()
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _outside_level() -> int:
    """``stacklevel`` for ``warnings.warn`` called in :func:`warn`: the first frame outside
    pellucid (the caller of :func:`warn` if every frame is inside, as under ``python -m``)."""
    frame, level = sys._getframe(2), 2  # level 2: warn's caller
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return 2 if frame is None else level


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn(message, category)`` attributed to the first caller outside pellucid, or,
    inside :func:`recorded_warnings` in this thread, appended to that block's list, not shown."""
    recorders = getattr(_LOCAL, "recorders", None)
    if recorders:
        recorders[-1].append(category(message))
        return
    warnings.warn(message, category, stacklevel=_outside_level())


@contextlib.contextmanager
def recorded_warnings() -> Iterator[list[Warning]]:
    """Inside the block, the warnings pellucid raises through :func:`warn` in this thread go to the
    yielded list, in order, and are not shown; other threads, and warnings of other libraries, are
    not affected. Blocks nest (the innermost records)."""
    recorders = _LOCAL.__dict__.setdefault("recorders", [])
    caught: list[Warning] = []
    recorders.append(caught)
    try:
        yield caught
    finally:
        recorders.pop()  # blocks exit in reverse order in one thread
