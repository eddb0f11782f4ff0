"""What keeping freed host memory buys (``pellucid._memory.keep_freed_memory``), from fresh processes.

Each repeat runs the same training-step timing twice as a fresh process: ``metric_table1
--cost-only STEPS`` on ``--cells`` (the Table 1 MLP, batch 50, Adam), once with
``PELLUCID_KEEP_FREED_MEMORY=0`` (glibc's own policy: every large block mapped and unmapped) and
once with the default (freed blocks kept for reuse). The order alternates between repeats, so
background load hits both alike. Reported per cell: the median ms per training step of each and
their ratio, and per variant the processes' user and kernel CPU seconds (the kernel's share is the
page faults). Prints ONE JSON line.

    python -m benchmarks memory_reuse --cells convex-icnn:500,invex:500 --steps 6 --threads 2 --factored-output
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # python benchmarks/NAME.py

from benchmarks import _harness as h  # noqa: E402

SUMMARY = "Training-step time with freed host memory kept for reuse vs glibc's default, from fresh processes"
EXPECTED_TIME = ("~3 min with the defaults: 2 x --repeats processes of metric_table1 --cost-only, 30-40 s "
                 "each for convex-icnn:500,invex:500 at 6 steps on 2 threads")

VARIANTS = {"system": "0", "kept": "1"}  # PELLUCID_KEEP_FREED_MEMORY for each


def _one(variant: str, args) -> tuple[dict, float, float]:
    from pellucid._memory import ENV_VAR

    argv = [sys.executable, "-m", "benchmarks", "--no-record", "metric_table1", "--cost-only", str(args.steps),
            "--cells", args.cells, "--threads", str(args.threads)]
    if args.factored_output:
        argv.append("--factored-output")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                          env={**os.environ, ENV_VAR: VARIANTS[variant]})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"memory_reuse: the {variant} run failed (exit {done.returncode}): "
                         f"{done.stderr.strip().splitlines()[-1:] or ''}")
    cells = json.loads(done.stdout.strip().splitlines()[-1])["result"]["cells"]
    return ({c: v["ms_per_step"] for c, v in cells.items()}, after.ru_utime - before.ru_utime,
            after.ru_stime - before.ru_stime)


def parser():
    p = h.parser(__name__, __doc__, threads=2)
    p.add_argument("--cells", default="convex-icnn:500,invex:500", help="metric_table1 cells (default: %(default)s)")
    p.add_argument("--steps", type=int, default=6, help="timed training steps per cell (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=2, help="process pairs (default: %(default)s)")
    p.add_argument("--factored-output", action="store_true", help="invex / ordinary cells: the factored output")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = h.parse(parser(), argv)
    if args.steps < 1 or args.repeats < 1:
        raise SystemExit("memory_reuse: --steps and --repeats must be >= 1")
    ms: dict[str, dict[str, list[float]]] = {v: {} for v in VARIANTS}
    cpu: dict[str, dict[str, list[float]]] = {v: {"user_s": [], "kernel_s": []} for v in VARIANTS}
    for r in range(args.repeats):
        for variant in (VARIANTS if r % 2 == 0 else reversed(VARIANTS)):
            h.log(f"memory_reuse: repeat {r + 1} of {args.repeats}, {variant}")
            per_cell, user, kernel = _one(variant, args)
            for cell, value in per_cell.items():
                ms[variant].setdefault(cell, []).append(value)
            cpu[variant]["user_s"].append(user)
            cpu[variant]["kernel_s"].append(kernel)
    cells = {}
    for cell in ms["system"]:
        system, kept = statistics.median(ms["system"][cell]), statistics.median(ms["kept"][cell])
        cells[cell] = {"ms_per_step_system": round(system, 1), "ms_per_step_kept": round(kept, 1),
                       "speedup": round(system / kept, 2)}
    return {"steps": args.steps, "repeats": args.repeats, "threads": args.threads,
            "factored_output": args.factored_output, "cells": cells,
            "cpu_seconds_per_process": {v: {k: round(statistics.median(x), 1) for k, x in d.items()}
                                        for v, d in cpu.items()}}


if __name__ == "__main__":
    h.script(__name__)
