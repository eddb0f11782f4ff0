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


_WAIT_AT_CALL = """
import importlib, sys, time
from pathlib import Path
from pellucid.cli.main import main

marker, module, name, n, argv = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:]
owner = importlib.import_module(module)
real, calls = getattr(owner, name), []

def waits(*args, **kwargs):  # at the n-th call: say so, then wait until the test removes the marker
    calls.append(1)
    if len(calls) == n:
        marker.write_text("waiting")
        while marker.exists():
            time.sleep(0.01)
    return real(*args, **kwargs)

setattr(owner, name, waits)
sys.exit(main(argv))
"""


def signalled_command(tmp_path: Path, owner: str, name: str, n: int, argv: list[str],
                      signals: list[int]) -> subprocess.CompletedProcess:
    """Run ``pellucid *argv`` in a fresh interpreter that waits at the ``n``-th call of
    ``owner.name`` (a module path); send it ``signals`` from outside there, as a terminal or
    ``kill`` would, one after the other; let it go on; return how it ended."""
    import os
    import time

    marker = tmp_path / "waiting"
    proc = subprocess.Popen([sys.executable, "-c", _WAIT_AT_CALL, str(marker), owner, name, str(n), *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **INTERRUPTIBLE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert marker.exists(), proc.communicate(timeout=10)
        for signum in signals:
            os.kill(proc.pid, signum)
            time.sleep(0.2)  # each is handled before the next arrives
        marker.unlink(missing_ok=True)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
