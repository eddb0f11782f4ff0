"""pellucid's benchmarks as one suite: ``python -m benchmarks`` (run from the repository root).

Every module ``benchmarks/NAME.py`` whose name does not start with ``_`` is a benchmark. It
declares ``SUMMARY`` (one line), ``EXPECTED_TIME`` (its run time on 2 CPU cores, as recorded in
``results/`` or the docs), ``parser()`` (its command-line options) and ``main(argv)``, which runs
it and returns its result: a dict, a list of dicts (one results line each), or ``None`` when the
options asked for something other than a measurement (``metric_rejection --render``). Heavy
imports (torch, pellucid) happen inside functions, so listing the suite and ``--help`` are quick.

``python -m benchmarks NAME [args...]`` runs one (the same as ``python benchmarks/NAME.py
[args...]``) and records each result with its environment in ``results/NAME.jsonl``
(:mod:`benchmarks._runner`); ``python -m benchmarks render`` writes ``docs/results.md`` from those
files (:mod:`benchmarks._render`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

PACKAGE_DIR = Path(__file__).resolve().parent
REPO = PACKAGE_DIR.parent
RESULTS_DIR = PACKAGE_DIR / "results"
COMMANDS = ("list", "render")  # words of `python -m benchmarks` that are not benchmark names


class UnknownBenchmark(LookupError):
    """No module ``benchmarks/NAME.py``."""


def names() -> list[str]:
    """Every benchmark, sorted: the modules of this package not starting with ``_``."""
    return sorted(p.stem for p in PACKAGE_DIR.glob("*.py") if not p.stem.startswith("_"))


def load(name: str) -> ModuleType:
    """The module of benchmark ``name`` (imports nothing heavy)."""
    if name not in names():
        raise UnknownBenchmark(name)
    return importlib.import_module(f"{__name__}.{name}")
