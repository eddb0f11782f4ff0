"""MkDocs hook: renders the CLI reference (docs/cli.md) from the argparse parsers themselves, so the
page cannot drift from the options `pellucid` accepts."""

from __future__ import annotations

import argparse
import os

MARKER = "<!-- cli-reference -->"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps sub-parsers only on this private action
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def render() -> str:
    from pellucid.cli.main import SUBCOMMANDS, build_parser

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "86"  # argparse wraps help to the terminal width: fit the page's code blocks
    try:
        out = ["## pellucid", "", "```", build_parser([]).format_help().rstrip(), "```", ""]
        for name in SUBCOMMANDS:
            sub = _subparsers(build_parser([name]))[name]
            out += [f"## pellucid {name}", "", "```", sub.format_help().rstrip(), "```", ""]
            for inner, parser in _subparsers(sub).items():  # e.g. one parser per training recipe
                out += [f"### pellucid {name} {inner}", "", "```", parser.format_help().rstrip(), "```", ""]
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, render())
    return markdown
