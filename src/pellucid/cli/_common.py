"""Small helpers shared by the subcommands: JSON output and dataclass-driven options."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import MISSING, Field, fields
from typing import Any


def strict_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by ``None``: ``json.dumps`` would write
    ``NaN``, which strict JSON parsers (``jq``, browsers) reject. Precision at a recall that
    cannot be reached (no correct prediction) is such a NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def print_json(obj: Any) -> None:
    """Print ``obj`` as the last stdout line (machine-readable output of ``--json``)."""
    sys.stdout.write(json.dumps(strict_json(obj), sort_keys=True, allow_nan=False,
                                default=lambda o: strict_json(float(o))) + "\n")
    sys.stdout.flush()


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to an option's help unless there is nothing to say: no default
    (``None``), an off-by-default flag (``--json``), or a help text that already states it
    ("default eps / 3")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or (action.nargs == 0 and action.default is False) or "default" in text:
            return text
        return super()._get_help_string(action)


def _option(field: Field) -> str:
    return "--" + field.name.replace("_", "-")


def _help(field: Field) -> str:
    """The field's ``metadata["help"]``; the parser's :class:`DefaultsHelpFormatter` appends
    the default."""
    return field.metadata.get("help", "")


def add_dataclass_options(parser: argparse.ArgumentParser, config_type: type) -> None:
    """One ``--field-name`` option per dataclass field, typed and defaulted from the field."""
    for f in fields(config_type):
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        if isinstance(default, bool):
            parser.add_argument(_option(f), dest=f.name, default=default,
                                action=argparse.BooleanOptionalAction, help=_help(f))
        else:
            kind = type(default) if default is not None else str
            parser.add_argument(_option(f), dest=f.name, type=kind, default=default,
                                metavar=kind.__name__.upper(), help=_help(f))


def dataclass_from_args(config_type: type, args: argparse.Namespace):
    return config_type(**{f.name: getattr(args, f.name) for f in fields(config_type)})


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="directory with the dataset's IDX files (else PELLUCID_DATA_DIR, the "
                             "embedded copy, or a download)")
