"""Interrupting work in tests: at the n-th call of a function (in process), with SIGKILL
(``faults/kill_driver.py`` in a fresh interpreter), or with a signal a person sends (Ctrl-C)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

KILL_DRIVER = Path(__file__).parent / "faults" / "kill_driver.py"


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# ``subprocess.Popen`` keyword arguments that give the child Ctrl-C's default disposition. A process
# started in the background by a non-interactive shell (``cmd &``, as some CI runners and ``nohup``
# do) inherits SIGINT ignored, and so would the command under test, which keeps it ignored: a test
# that presses Ctrl-C would wait on a process that cannot hear it. A user's terminal never ignores it.
INTERRUPTIBLE = {"preexec_fn": _sigint_default}


@contextlib.contextmanager
def interrupted_at_call(monkeypatch, owner: Any, name: str, n: int) -> Iterator[None]:
    """The body must raise KeyboardInterrupt, which ``owner.name`` raises at its ``n``-th call
    (before doing anything); ``owner.name`` is restored afterwards."""
    real, calls = getattr(owner, name), []

    def dies(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, dies)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(owner, name, real)


def run_kill_plan(directory: Path, scenarios: list[dict], timeout: float = 600) -> list[dict]:
    """Run ``scenarios`` (see ``faults/kill_driver.py``; the first is the uninterrupted reference)
    and return their outcomes, after checking that the driver and the reference succeeded."""
    plan, result = directory / "plan.json", directory / "result.json"
    plan.write_text(json.dumps({"scenarios": scenarios}))
    done = subprocess.run([sys.executable, str(KILL_DRIVER), str(plan), str(result)],
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    outcomes = json.loads(result.read_text())
    assert "kill" not in outcomes[0] and outcomes[0]["code"] == 0, outcomes[0]
    return outcomes
