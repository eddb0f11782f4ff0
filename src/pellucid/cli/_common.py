"""Small helpers shared by the subcommands: JSON output, one-line usage errors, checked option
types and dataclass-driven options."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any, Sequence


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


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (exit 2), like every other user error.

    An unrecognised argument is reported by the top-level parser; the innermost parser that ran
    (the recipe's, for ``pellucid train metric-mlp --bogus``) is named in its help hint instead.
    """

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        namespace, extras = super().parse_known_args(args, namespace)
        if not hasattr(namespace, "_innermost_prog"):  # a subcommand's parser ran first
            namespace._innermost_prog = self.prog
        return namespace, extras

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        namespace, extras = self.parse_known_args(args, namespace)
        prog = vars(namespace).pop("_innermost_prog", self.prog)
        if extras:
            self.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(extras)} (see {prog} --help)\n")
        return namespace

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, text: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def checked(kind: type, *, min: float | None = None, above: float | None = None,
            max: float | None = None):
    """An argparse ``type`` for ``int`` or finite ``float`` values in a range, whose error (one
    line, naming the option) states the valid values."""
    def convert(text: str):
        value = _number(kind, text)
        if (min is not None and value < min) or (above is not None and not value > above) or \
                (max is not None and value > max):
            parts = [f">= {min}" if min is not None else "", f"> {above}" if above is not None else "",
                     f"<= {max}" if max is not None else ""]
            raise argparse.ArgumentTypeError(f"must be {' and '.join(p for p in parts if p)}, got {text}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in its messages
    return convert


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


def add_field_option(parser: argparse.ArgumentParser, f: Field, kind: type, default: Any,
                     help: str) -> None:
    """One ``--field-name`` flag for dataclass field ``f`` whose values are of ``kind``: a
    ``--x/--no-x`` pair for a bool, else typed and checked against the field's limits and choices
    (see :func:`pellucid._config.config_option`)."""
    if kind is bool:
        parser.add_argument(_option(f), dest=f.name, default=default,
                            action=argparse.BooleanOptionalAction, help=help)
        return
    meta = f.metadata
    convert = checked(kind, min=meta.get("min"), above=meta.get("above"), max=meta.get("max")) \
        if kind in (int, float) else kind
    parser.add_argument(_option(f), dest=f.name, type=convert, default=default,
                        choices=meta.get("choices"), metavar=kind.__name__.upper(), help=help)


def add_dataclass_options(parser: argparse.ArgumentParser, config_type: type) -> None:
    """One ``--field-name`` option per dataclass field, typed and defaulted from the field."""
    for f in fields(config_type):
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        kind = type(default) if default is not None else str
        add_field_option(parser, f, kind, default, _help(f))


def dataclass_from_args(config_type: type, args: argparse.Namespace):
    return config_type(**{f.name: getattr(args, f.name) for f in fields(config_type)})


def _device_spec(text: str) -> str:
    """``--device``'s argparse ``type``: the spelling only (a known name or ``cuda:N``); whether
    the device is present is checked by :func:`pellucid._device.resolve_device` when the command
    runs, so that ``--help`` needs no CUDA."""
    value = text.strip().lower()
    if value in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", value):
        return value
    raise argparse.ArgumentTypeError(f"unknown device {text!r}; use auto, cpu, cuda, cuda:N or mps")


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """``--device {auto,cpu,cuda,cuda:N,mps}`` (default ``auto``: CUDA, else MPS, else CPU); the
    command resolves it with :func:`pellucid._device.resolve_device`."""
    parser.add_argument("--device", type=_device_spec, default="auto", metavar="DEVICE",
                        help="where to compute: auto (CUDA if available, else MPS, else CPU), cpu, "
                             "cuda, cuda:N or mps")


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="directory with the dataset's IDX files (else PELLUCID_DATA_DIR, the "
                             "embedded copy, or a download)")


OUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")  # figure formats an --out file can take


def check_out_path(out: str, images: list[str], suffixes: Sequence[str] = OUT_SUFFIXES,
                   option: str = "--out") -> None:
    """``option`` (a file to write) can be written: a suffix in ``suffixes``, not a directory, not
    an input image, and the nearest existing folder on its path is a writable directory (missing
    folders are created)."""
    from pellucid._io import check_writable_dir
    from pellucid.errors import InvalidInputError

    path = Path(out)
    if path.is_dir():
        raise InvalidInputError(f"{option} {out} is a directory; give a file name such as "
                                f"{path / ('explanation' + suffixes[0])}")
    if path.suffix.lower() not in suffixes:
        raise InvalidInputError(f"{option} {out}: the file name must end in one of {', '.join(suffixes)} "
                                "(the suffix picks the format)")
    if path.exists() and not path.is_file():
        raise InvalidInputError(f"{option} {out} exists and is not a regular file")
    for source in images:
        if path.is_file() and Path(source).is_file() and os.path.samefile(path, source):
            raise InvalidInputError(f"{option} {out} is also an --image; writing it would overwrite "
                                    "that input: choose another file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise InvalidInputError(f"{option} {out} is not writable (permissions); choose another file")
    check_writable_dir(path.absolute().parent, f"{option} {out}: directory")
