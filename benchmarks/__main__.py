"""``python -m benchmarks``: list the benchmarks, run one, or render the docs' results page.

    python -m benchmarks                          # every benchmark, its summary and expected time
    python -m benchmarks NAME [args...]           # run one; NAME --help for its options
    python -m benchmarks --no-record NAME ...     # print the results lines only
    python -m benchmarks render [--out docs/results.md]
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from benchmarks import COMMANDS, RESULTS_DIR, load, names

PROG = "python -m benchmarks"


def listing(width: int = 100) -> str:
    """One entry per benchmark: name and summary, then its expected time on 2 CPU cores."""
    rows = [f"{len(names())} benchmarks (python -m benchmarks NAME [args...]; NAME --help for options; "
            "expected times on 2 CPU cores, as recorded):", ""]
    pad = max(len(n) for n in names()) + 2
    for name in names():
        module = load(name)
        rows.append(f"{name:<{pad}}{module.SUMMARY}")
        time_line = textwrap.fill(f"time: {module.EXPECTED_TIME}", width=width, initial_indent=" " * pad,
                                  subsequent_indent=" " * (pad + 6), break_on_hyphens=False)
        rows.append(time_line)
    rows += ["", "results: appended to benchmarks/results/NAME.jsonl; docs page: "
             "python -m benchmarks render [--out docs/results.md]"]
    return "\n".join(rows)


def _arguments(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                epilog="NAME: a benchmark from the list (python -m benchmarks), "
                                       "'list' or 'render'")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                   help="where results lines are appended (default: benchmarks/results)")
    p.add_argument("--no-record", action="store_true", help="print results lines, append nothing")
    p.add_argument("name", nargs="?", metavar="NAME")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own arguments")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(sys.argv[1:] if argv is None else list(argv))
    if args.name in (None, "list"):
        print(listing())
        return 0
    if args.name == "render":
        from benchmarks._render import main as render_main

        return render_main(args.args, results_dir=args.results_dir)
    if args.name not in names():
        print(f"{PROG}: unknown benchmark {args.name!r} (one of: {', '.join(names())}; "
              f"or {' / '.join(COMMANDS)})", file=sys.stderr)
        return 2
    from benchmarks._runner import run

    return run(args.name, args.args, results_dir=None if args.no_record else args.results_dir)


if __name__ == "__main__":
    raise SystemExit(main())
