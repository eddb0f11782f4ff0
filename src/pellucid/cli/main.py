"""``pellucid`` entry point: builds the parser from the subcommand modules and maps errors to exits.

Each subcommand module defines ``add_parser(subparsers, argv)`` that registers its parser and
sets ``func`` (``argv``: the arguments after the subcommand's name, for parsers that build only
what those arguments need); user errors (:class:`PellucidError`) print one line and exit 2, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from pellucid._memory import keep_freed_memory
from pellucid._signals import signal_name, terminate_raises
from pellucid.errors import PellucidError

# Subcommand modules under pellucid.cli, in help order.
SUBCOMMANDS = ("train", "evaluate", "demo", "explain", "explain-bench", "inspect", "app")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``pellucid`` parser, complete for the subcommand named in ``argv``.

    Only the subcommand that ``argv`` names gets its full parser (given the arguments after its
    name); the others are listed with their one-line ``SUMMARY``. Building a parser imports no
    torch: the registries it lists (recipes, attacks and their options) are declared in torch-free
    modules (:mod:`pellucid.train.catalogue`, :mod:`pellucid.robust.catalogue`), so ``--help``,
    ``--version`` and usage errors answer quickly. ``argv=None`` reads ``sys.argv``.
    """
    argv = sys.argv[1:] if argv is None else argv
    # the top-level parser has no option that takes a value: its first positional is the command
    chosen = next((a for a in argv if not a.startswith("-")), None)
    from pellucid.cli._common import Parser

    parser = Parser(prog="pellucid", description="White-box networks and explanations you can trust.")
    from pellucid import __version__
    parser.add_argument("--version", action="version", version=f"pellucid {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        # light: heavy imports are lazy; "explain-bench" lives in pellucid.cli.explain_bench
        module = importlib.import_module(f"pellucid.cli.{name.replace('-', '_')}")
        if name == chosen:
            module.add_parser(sub, argv[argv.index(name) + 1:])
        else:
            sub.add_parser(name, help=module.SUMMARY)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version (0) or a usage error (2, message printed)
        return exit_.code if isinstance(exit_.code, int) else 2
    keep_freed_memory()  # large activations reuse the heap instead of page faults every step
    try:
        with terminate_raises():  # a kill unwinds like Ctrl-C: locks released, files cleaned up
            return int(args.func(args) or 0)
    except PellucidError as e:
        print(f"pellucid {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # the environment refused (disk full, read-only, permissions): no traceback
        print(f"pellucid {args.command}: error: {e.strerror or e}"
              + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C; or pellucid.errors.Stopped: a signal, answered
        kept, signum = _one_line(e), getattr(e, "signum", signal.SIGINT)
        said = (f"stopped: {kept}" if kept else
                "interrupted" if signum == signal.SIGINT else f"interrupted by {signal_name(signum)}")
        print(f"pellucid {args.command}: {said}", file=sys.stderr)
        return 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def entry() -> None:
    """The console script: :func:`main`, then a normal exit with its code.

    Why not skip interpreter finalisation (``os._exit`` after the ``atexit`` handlers): measured
    with torch 2.14.1 on 2 CPU cores, that would save 0.29 s on ``pellucid evaluate --help``,
    0.33 s on a usage error (both figures from when building a parser imported torch; it no longer
    does), 0.37 s on a tiny FGSM evaluation, 0.44 s on a tiny APGD-CE (ART) one
    and 0.75 s on an explanation of a torchvision ResNet-50 (medians of 7 fresh processes each,
    alternating; ``benchmarks/startup_costs.py``). Under 0.5 s for every white-box command, it
    does not pay for a private API and skipped finalisers.
    """
    sys.exit(main())


if __name__ == "__main__":
    entry()
