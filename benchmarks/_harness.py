"""What the benchmarks share: the argument parser with the common options (``--threads``,
``--seed``), torch's thread count, median timings, and the entry point of ``python
benchmarks/NAME.py``. Stdlib only at import time; torch is imported when a thread count is set."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

OMIT = object()  # parser(): leave the option out


def benchmark_name(module_name: str) -> str:
    """``benchmarks.NAME`` / ``NAME`` / ``__main__`` (run as a file) -> ``NAME``."""
    if module_name == "__main__":
        return Path(sys.modules["__main__"].__file__).stem
    return module_name.rpartition(".")[2]


def parser(module_name: str, doc: str | None, *, threads: Any = OMIT, seed: Any = OMIT,
           seed_help: str = "random seed", device: Any = OMIT) -> argparse.ArgumentParser:
    """The benchmark's parser: ``prog`` ``python -m benchmarks NAME``, the docstring's first
    paragraph as its description, and the common options: ``--threads`` (torch CPU threads; an
    int default, or ``None`` for torch's own), ``--seed`` and ``--device`` (``auto|cpu|cuda|cuda:N|
    mps``, resolved by :func:`parse`), each only where a default is given."""
    description = (doc or "").strip().split("\n\n")[0]
    p = argparse.ArgumentParser(prog=f"python -m benchmarks {benchmark_name(module_name)}",
                                description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    if threads is not OMIT:
        p.add_argument("--threads", type=int, default=threads,
                       help="torch CPU threads (default: " + ("torch's" if threads is None else "%(default)s") + ")")
    if seed is not OMIT:
        p.add_argument("--seed", type=int, default=seed, help=f"{seed_help} (default: %(default)s)")
    if device is not OMIT:
        p.add_argument("--device", default=device,
                       help="where to compute: auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    return p


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``p.parse_args(argv)``, then :func:`pellucid._memory.keep_freed_memory` (as the command line
    does), torch's thread count from ``--threads`` where one is given, and
    ``--device`` as a :class:`torch.device` (one the host lacks: a usage error, exit 2, before any
    work)."""
    args = p.parse_args(argv)
    from pellucid._memory import keep_freed_memory

    keep_freed_memory()  # as pellucid's command line does: large activations reuse the heap
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    if hasattr(args, "device"):
        from pellucid._device import resolve_device
        from pellucid.errors import InvalidInputError

        try:
            args.device = resolve_device(args.device)
        except InvalidInputError as e:
            p.error(str(e))
    return args


def synchronize(device: Any) -> None:
    """Wait for ``device``'s queued work (CUDA and MPS run asynchronously), so a timer stops when
    the work is done; nothing on the CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def preload(*modules: str) -> None:
    """Import ``modules`` now, before anything is timed (a benchmark's helpers import lazily, so
    that listing the suite and ``--help`` stay quick; their first import must not be measured)."""
    import importlib

    for name in modules:
        importlib.import_module(name)


def timed(fn: Callable[[], object], repeats: int, *, warmup: bool = True) -> float:
    """Median wall seconds of ``repeats`` calls of ``fn`` (after one untimed call if ``warmup``)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def seconds_since(start: float, digits: int = 1) -> float:
    """Wall seconds since ``start`` (a ``time.perf_counter()`` reading), rounded."""
    return round(time.perf_counter() - start, digits)


def log(*parts: object) -> None:
    """Progress on stderr (stdout carries the JSON result lines)."""
    print(*parts, file=sys.stderr, flush=True)


def script(module_name: str) -> None:
    """``python benchmarks/NAME.py [args...]``: the same as ``python -m benchmarks NAME [args...]``."""
    from benchmarks._runner import run

    raise SystemExit(run(benchmark_name(module_name), sys.argv[1:], module=sys.modules[module_name]))
