"""Stop requests by signal (Ctrl-C, ``kill``) that long work answers at a safe point.

A signal's default effect lands wherever the main thread happens to be: in the middle of an
optimiser step, of a file write, or of an HTTP client's clean-up. Where that would lose or tangle
state, the work records the request instead and stops itself at a point where what it has done can
be kept (the trainer: after a batch, with the epoch so far saved).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

from pellucid.errors import Stopped

__all__ = ["signal_name", "signals_recorded", "terminate_raises"]


def signal_name(signum: int) -> str:
    """``SIGINT (Ctrl-C)``, ``SIGTERM``: how a person recognises the signal they sent."""
    name = signal.Signals(signum).name
    return f"{name} (Ctrl-C)" if signum == signal.SIGINT else name


@contextlib.contextmanager
def signals_recorded(*signums: int, escalate: bool = False,
                     notice: Callable[[int], None] | None = None) -> Iterator[list[int]]:
    """While the block runs, each of ``signums`` appends its number to the list yielded instead of
    taking its usual effect; the previous handlers are restored afterwards, even on an exception.

    ``notice(signum)`` is called on the first one (to say what will happen). With ``escalate``, a
    signal that arrives when one is already recorded raises :class:`~pellucid.errors.Stopped` at once: a second
    Ctrl-C means "now". A signal that is ignored when the block starts stays ignored (a job started
    in the background of a non-interactive shell ignores SIGINT, and ``nohup`` SIGHUP: that was
    somebody's choice). Outside the main thread, where handlers cannot be set, nothing is installed
    and the list stays empty.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def record(signum: int, _frame: object) -> None:
        if received and escalate:
            raise Stopped(signum)
        received.append(signum)
        if notice is not None and len(received) == 1:
            notice(signum)

    previous: dict[int, object] = {}
    try:
        for signum in signums:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, record)
        yield received
    finally:
        for signum, handler in previous.items():  # None: a handler set outside Python
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """While the block runs, SIGTERM (``kill``, a scheduler's stop) raises :class:`~pellucid.errors.Stopped` in the
    main thread, as Ctrl-C raises ``KeyboardInterrupt``; the previous handler is restored after.

    Python's default for SIGTERM ends the process where it stands, so no ``finally`` runs: a run
    directory's lock is left to be taken over, a temporary model change is never undone. Raised,
    the work unwinds as it does on Ctrl-C. Ignored at the start, or outside the main thread: as is.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is signal.SIG_IGN):
        yield
        return

    def stop(signum: int, _frame: object) -> None:
        raise Stopped(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
