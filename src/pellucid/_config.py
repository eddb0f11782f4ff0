"""Type checks of configuration dicts (JSON files, saved training states) against declared types.

A config read from disk is untrusted: a string where an int belongs, or a list for a float, would
otherwise surface as a traceback deep inside training or model building. These helpers check a
dict against a dataclass's fields (or any annotated parameters) and raise one clear error naming
the field, e.g. ``config.json: train.batch_size must be an int, got 'abc' (str)``.

Supported annotations: ``int`` (not bool), ``float`` (int or float, finite), ``bool``, ``str``,
``None``, ``Any``, ``Optional``/unions, ``tuple[X, ...]``, ``tuple[X, Y]``, ``list[X]``,
``Sequence[X]``, ``dict[K, V]``, ``Mapping[K, V]``, ``Literal[...]`` and plain classes
(``isinstance``). JSON has no tuples, so lists are accepted for tuple fields and converted.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import types
import typing
from typing import Any

from pellucid.errors import ConfigError, PellucidError

_NAMES = {int: "an int", float: "a float", bool: "a bool", str: "a str", type(None): "None",
          list: "a list", dict: "a dict", tuple: "a list"}


def _describe(tp: Any) -> str:
    """``float | None`` -> "a float or None"; used in messages."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (tuple, list, collections.abc.Sequence):
        return "a list"
    if origin in (dict, collections.abc.Mapping):
        return "a dict"
    if tp is type(None) or tp is None:
        return "None"
    return _NAMES.get(tp, f"a {getattr(tp, '__name__', tp)}")


def _fail(error: type[PellucidError], name: str, tp: Any, value: Any) -> None:
    raise error(f"{name} must be {_describe(tp)}, got {value!r:.80} ({type(value).__name__})")


def check_value(value: Any, tp: Any, name: str, *,
                error: type[PellucidError] = ConfigError) -> Any:
    """``value`` if it has type ``tp`` (lists converted to tuples where ``tp`` is a tuple), else
    ``error`` naming ``name``."""
    if tp is Any or tp is typing.Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in args:  # the first branch that accepts it
            try:
                return check_value(value, arg, name, error=error)
            except PellucidError:
                pass
        nonfinite = isinstance(value, float) and not math.isfinite(value) and float in args
        if nonfinite:
            raise error(f"{name} must be finite, got {value!r}")
        _fail(error, name, tp, value)
    if origin is typing.Literal:
        if value not in args:
            _fail(error, name, tp, value)
        return value
    if tp is None or tp is type(None):
        if value is not None:
            _fail(error, name, tp, value)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            _fail(error, name, tp, value)
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            _fail(error, name, tp, value)
        return value
    if tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            _fail(error, name, tp, value)
        if not math.isfinite(value):
            raise error(f"{name} must be finite, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            _fail(error, name, tp, value)
        return value
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            _fail(error, name, tp, value)
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(check_value(v, args[0], f"{name}[{i}]", error=error) for i, v in enumerate(value))
        if len(value) != len(args):
            raise error(f"{name} must have {len(args)} items, got {len(value)}: {list(value)!r:.80}")
        return tuple(check_value(v, a, f"{name}[{i}]", error=error)
                     for i, (v, a) in enumerate(zip(value, args)))
    if origin in (list, collections.abc.Sequence) or tp in (list, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            _fail(error, name, tp, value)
        if not args:
            return value
        checked = [check_value(v, args[0], f"{name}[{i}]", error=error) for i, v in enumerate(value)]
        return type(value)(checked)
    if origin in (dict, collections.abc.Mapping) or tp in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            _fail(error, name, tp, value)
        if len(args) != 2:
            return value
        return {check_value(k, args[0], f"{name} key {k!r}", error=error):
                check_value(v, args[1], f"{name}[{k!r}]", error=error) for k, v in value.items()}
    if isinstance(tp, type):
        if not isinstance(value, tp):
            _fail(error, name, tp, value)
        return value
    return value  # an annotation this checker does not understand: accepted as is


def check_dataclass_dict(cls: type, d: Any, where: str, *, error: type[PellucidError] = ConfigError,
                         partial: bool = True, ignore_unknown: bool = False) -> dict[str, Any]:
    """Check the dict ``d`` against the fields of dataclass ``cls`` and return it, with lists
    converted to tuples where a field is a tuple (so ``cls(**result)`` rebuilds it).

    ``where`` names ``d`` in messages (e.g. ``"config.json: train"``). Unknown keys are refused
    (naming the valid ones), or with ``ignore_unknown`` left out of the result (a setting since
    removed from ``cls``); with ``partial`` keys may be missing when their field has a default.
    ``error`` is the :class:`PellucidError` subclass raised (e.g. ``CheckpointError`` for a model
    directory's config).
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(d, dict):
        raise error(f"{where} must be a dict, got {d!r:.80} ({type(d).__name__})")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in d if k not in fields]
    if unknown and not ignore_unknown:
        raise error(f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(fields)}")
    out = {}
    for name, f in fields.items():
        if name not in d:
            has_default = (f.default is not dataclasses.MISSING
                           or f.default_factory is not dataclasses.MISSING)
            if not (partial and has_default):
                raise error(f"{where}.{name} is missing")
            continue
        out[name] = check_value(d[name], hints.get(name, Any), f"{where}.{name}", error=error)
    return out


def check_kwargs(func: Any, kwargs: Any, where: str, *,
                 error: type[PellucidError] = ConfigError) -> dict[str, Any]:
    """Check keyword arguments for ``func`` (a function or class): every key must be one of its
    parameters and every value of its annotated type (or its default's type when unannotated).

    A ``**kwargs`` builder is followed to the class its return annotation names, so
    ``def build(**kw) -> Net`` is checked against ``Net.__init__``. Parameters that cannot be
    resolved are not checked.
    """
    import inspect

    if not isinstance(kwargs, dict):
        raise error(f"{where} must be a dict, got {kwargs!r:.80} ({type(kwargs).__name__})")
    target = func
    for _ in range(3):  # builder -> class it returns (at most a short chain)
        try:
            sig = inspect.signature(target)
        except (TypeError, ValueError):
            return kwargs
        if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            break
        try:
            ret = typing.get_type_hints(target).get("return")
        except Exception:  # unresolvable annotations: nothing more to follow
            ret = None
        if not isinstance(ret, type):
            return kwargs  # open-ended keywords: only the builder itself can judge them
        target = ret
    else:
        return kwargs
    try:
        hints = typing.get_type_hints(target.__init__ if isinstance(target, type) else target)
    except Exception:
        hints = {}
    params = {n: p for n, p in sig.parameters.items()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"}
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise error(f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(params) or 'none'}")
    out = {}
    for name, value in kwargs.items():
        tp = hints.get(name)
        if tp is None:
            default = params[name].default
            tp = Any if default is inspect.Parameter.empty or default is None else type(default)
        out[name] = check_value(value, tp, f"{where}.{name}", error=error)
    return out


def config_option(default: Any, help: str, *, min: float | None = None, max: float | None = None,
                  above: float | None = None, choices: tuple[str, ...] | None = None):
    """A settings-dataclass field whose ``help`` becomes its command-line option's help text.

    ``min`` / ``max`` (inclusive), ``above`` (exclusive) and ``choices`` are its valid values,
    checked by :class:`CheckedConfig` when the settings are built (and by the CLI's option types).
    """
    limits = {k: v for k, v in (("min", min), ("max", max), ("above", above), ("choices", choices))
              if v is not None}
    return dataclasses.field(default=default, metadata={"help": help, **limits})


def option_name(name: str) -> str:
    """``batch_size`` -> ``batch_size (--batch-size)``: the API's and the CLI's name at once."""
    return f"{name} (--{name.replace('_', '-')})"


def check_limits(field: dataclasses.Field, value: Any, name: str, *,
                 error: type[PellucidError] = ConfigError) -> None:
    """Raise ``error`` unless ``value`` lies within the limits of its :func:`config_option`.
    Limits apply to numbers and strings; ``None`` (a "use the default" value) and structured values
    meet them by definition."""
    if not isinstance(value, (int, float, str)) or isinstance(value, bool):
        return
    meta = field.metadata
    if "min" in meta and value < meta["min"]:
        raise error(f"{name} must be >= {meta['min']}, got {value}")
    if "max" in meta and value > meta["max"]:
        raise error(f"{name} must be <= {meta['max']}, got {value}")
    if "above" in meta and not value > meta["above"]:
        raise error(f"{name} must be > {meta['above']}, got {value}")
    if "choices" in meta and value not in meta["choices"]:
        raise error(f"{name} must be one of {', '.join(map(str, meta['choices']))}, got {value!r}")


class CheckedConfig:
    """Mixin for settings dataclasses: every field is checked against its annotated type and the
    limits of its :func:`config_option` when the settings are built, so a bad setting fails before
    any work, from the API as from the CLI."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            name = option_name(f.name)
            value = check_value(getattr(self, f.name), hints.get(f.name, Any), name, error=ConfigError)
            check_limits(f, value, name)
