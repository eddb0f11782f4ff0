"""The runner: runs one benchmark and records each of its results with the environment.

A results line (one JSON object per line, appended to ``results/NAME.jsonl`` and printed on
stdout)::

    {"benchmark": NAME,
     "environment": {"pellucid", "torch", "python", "platform", "cpu", "cpu_count", "threads", "device",
                     "seed", "git_commit", "timestamp", "command", "argv", "wall_seconds"},
     "config": {the parsed arguments},
     "result": {what main(argv) returned}}

``command`` is the command that reproduces the line (``python -m benchmarks NAME ARGS``);
``argv`` the command line as invoked; ``wall_seconds`` the whole run's wall time; ``timestamp``
UTC. Lines written before the runner existed hold the result alone (often with an ``env`` or
``environment`` field of their own); :mod:`benchmarks._render` reads both kinds.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence, TextIO

from benchmarks import REPO, RESULTS_DIR, load


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` where there is one, else ``platform``'s."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(timeout: float = 5.0) -> str | None:
    """``git rev-parse HEAD`` of the repository, or ``None`` (no git, not a checkout, too slow)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def command(name: str, argv: Sequence[str]) -> str:
    """The command that runs ``name`` with ``argv`` again (from the repository root)."""
    return shlex.join(["python", "-m", "benchmarks", name, *argv])


def environment(name: str, argv: Sequence[str], config: dict, wall_seconds: float | None = None) -> dict:
    """What a result was measured with. Imports torch (the benchmark usually has already)."""
    import torch

    try:
        import pellucid

        version = pellucid.__version__
    except ImportError:
        version = None
    device = compute_device(config)
    return {"pellucid": version, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "device": device, "seed": config.get("seed"), "git_commit": git_commit(),
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command(name, argv), "argv": list(sys.argv),
            "wall_seconds": None if wall_seconds is None else round(wall_seconds, 1)}


def compute_device(config: dict) -> str:
    """The device a result was computed on: the benchmark's ``--device`` where it has one (a GPU
    by its name); for a benchmark without one, the host's first GPU if it has one, else the CPU."""
    import torch

    spec = config.get("device")
    if spec is None:
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    from pellucid._device import resolve_device

    device = resolve_device(str(spec))
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def config_of(module: ModuleType, argv: Sequence[str]) -> dict:
    """The parsed arguments as a dict (``--help`` and usage errors exit here, as argparse does)."""
    if not hasattr(module, "parser"):
        return {"argv": list(argv)}
    return vars(module.parser().parse_args(list(argv)))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def record_line(name: str, env: dict, config: dict, result: dict) -> str:
    """One results line (no newline)."""
    return json.dumps({"benchmark": name, "environment": env, "config": config, "result": result},
                      default=_jsonable)


def append_line(path: Path, line: str) -> None:
    """Append ``line`` to ``path`` in one ``write`` under an exclusive lock, then fsync: concurrent
    runs never interleave, earlier lines are never rewritten, and a file whose last line lacks its
    newline gets one first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = (line.rstrip("\n") + "\n").encode()
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)  # releases the lock


def run(name: str, argv: Sequence[str], *, module: ModuleType | None = None,
        results_dir: Path | None = RESULTS_DIR, out: TextIO | None = None) -> int:
    """Run benchmark ``name`` with ``argv``: print each result as a results line on ``out``
    (stdout) and append it to ``results_dir/NAME.jsonl`` (``None``: record nothing). Returns the
    exit status; ``--help`` and usage errors raise ``SystemExit`` as argparse does."""
    module = module if module is not None else load(name)
    argv = list(argv)
    config = config_of(module, argv)
    start = time.perf_counter()
    try:
        result = module.main(argv)
    except KeyboardInterrupt as e:  # Ctrl-C; or pellucid.errors.Stopped, a training run's answer
        kept = " ".join(str(e).split())
        print(f"benchmark {name}: {'stopped: ' + kept if kept else 'interrupted'}; nothing recorded",
              file=sys.stderr)
        return 128 + getattr(e, "signum", 2)  # 130 for Ctrl-C, 143 for SIGTERM, as pellucid's CLI
    wall = time.perf_counter() - start
    if result is None:  # not a measurement (e.g. metric_rejection --render)
        return 0
    env = environment(name, argv, config, wall)
    out = out if out is not None else sys.stdout
    for item in result if isinstance(result, list) else [result]:
        line = record_line(name, env, config, item)
        if results_dir is not None:
            append_line(Path(results_dir) / f"{name}.jsonl", line)
        print(line, file=out, flush=True)
    if results_dir is not None and Path(results_dir).resolve() == RESULTS_DIR.resolve():
        rerender()
    return 0


def rerender() -> None:
    """Regenerate ``docs/results.md`` and the docs' generated blocks after a line was appended to
    the repository's results, so that they never lag behind it. Renders run one at a time (an
    exclusive lock): the last one starts after every line appended before it, whatever order
    concurrent runs finish in. A render that fails says why on stderr; the line stays recorded."""
    from benchmarks._render import main as render

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(RESULTS_DIR / ".render.lock", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if render([]) != 0:
            print("the results line is recorded; fix the above and run python -m benchmarks render",
                  file=sys.stderr)
    finally:
        os.close(fd)
