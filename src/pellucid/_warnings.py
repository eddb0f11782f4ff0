"""pellucid's own warnings, which a caller can collect per thread.

The app and the CLI show an explainer's construction notes (a coverage fallback, functional ReLUs
Captum cannot reach) beside its result. ``warnings.catch_warnings(record=True)`` would collect
them, but it swaps the process-wide filter list and ``showwarning`` and puts back what it saw on
entry: two such blocks in two threads, left out of order, leave a dead recorder installed and every
later warning of the process silently swallowed. :func:`warn` and :func:`recorded_warnings` keep
the recording in the calling thread instead and touch no process-wide state.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from typing import Iterator

__all__ = ["recorded_warnings", "warn"]

_LOCAL = threading.local()


def warn(message: str, category: type[Warning] = UserWarning, stacklevel: int = 1) -> None:
    """``warnings.warn(message, category, stacklevel)``, or, inside :func:`recorded_warnings` in
    this thread, the warning appended to that block's list instead of shown."""
    recorders = getattr(_LOCAL, "recorders", None)
    if recorders:
        recorders[-1].append(category(message))
        return
    warnings.warn(message, category, stacklevel=stacklevel + 1)


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
