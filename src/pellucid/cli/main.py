"""``pellucid`` entry point: builds the parser from the subcommand modules and maps errors to exits.

Each subcommand module defines ``add_parser(subparsers)`` that registers its parser and sets
``func``; user errors (:class:`PellucidError`) print one line and exit 2, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pellucid.errors import PellucidError

# Subcommand modules under pellucid.cli, in help order.
SUBCOMMANDS = ("train", "evaluate", "demo", "explain")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pellucid", description="White-box networks and "
                                     "explanations you can trust.")
    from pellucid import __version__
    parser.add_argument("--version", action="version", version=f"pellucid {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"pellucid.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PellucidError as e:
        print(f"pellucid {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pellucid {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
