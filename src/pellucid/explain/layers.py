"""Modules by path and their outputs: unit addresses, module lookup and output capture.

A hidden layer is named by its path in ``model.named_modules()`` (``""``: the model itself, i.e. its
output); a unit of it by ``"path:channel"`` or ``"path:channel@h,w"`` (:class:`UnitAddress`). The
output of a layer is read with a forward hook registered for one forward only (removed in
``finally``) that stops the forward once the layer has run (:func:`capture_output`).

A module rewritten by :func:`~pellucid.explain.rewrite.rewrite_for_pullback` with ``layers=...``
carries a ``layer_taps`` dict (path -> identity module called on that layer's output):
:func:`hook_point` hooks the tap there, since the rewritten graph may not call the original module
(a ReLU replaced by its surrogate, a batch norm fused into the ReLU after it, a container traced
through).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from pellucid.errors import InvalidInputError

__all__ = ["UnitAddress", "capture_output", "find_module", "hook_point", "layer_output",
           "parse_unit", "unit_index"]

_UNIT = re.compile(r"(?P<path>[^:@]*):(?P<channel>[0-9]+)(?:@(?P<pos>[0-9]+(?:,[0-9]+)*))?")


@dataclass(frozen=True)
class UnitAddress:
    """One hidden unit: output ``channel`` (axis 1) of module ``path``, at ``position`` (the
    indices of the spatial axes 2, 3, ...) or, for a spatial output without a position, at its
    centre ``(H // 2, W // 2, ...)``.

    The centre rather than the spatial maximum: the maximum's location changes from one input (or
    noise draw) to the next, so its gradients would show one template at different places.
    """

    path: str
    channel: int
    position: tuple[int, ...] | None = None

    def __str__(self) -> str:
        pos = "" if self.position is None else "@" + ",".join(map(str, self.position))
        return f"{self.path}:{self.channel}{pos}"

    @property
    def slug(self) -> str:
        """A file-name stem: ``path-channel[-h-w]`` (``output`` for the model's own output)."""
        parts = [self.path or "output", str(self.channel), *map(str, self.position or ())]
        return "-".join(parts)


def parse_unit(unit: "str | UnitAddress", name: str = "unit") -> UnitAddress:
    """``"path:channel"`` or ``"path:channel@h,w"`` (or a :class:`UnitAddress`) as an address."""
    if isinstance(unit, UnitAddress):
        if not isinstance(unit.path, str) or isinstance(unit.channel, bool) or \
                not isinstance(unit.channel, int):
            raise InvalidInputError(f"{name} must have a str path and an int channel, got {unit!r}")
        if unit.position is not None and not all(isinstance(i, int) and not isinstance(i, bool)
                                                 for i in unit.position):
            raise InvalidInputError(f"{name}: position must be a tuple of ints, got {unit.position!r}")
        return UnitAddress(unit.path, unit.channel,
                           None if unit.position is None else tuple(unit.position))
    if not isinstance(unit, str):
        raise InvalidInputError(f"{name} must be 'module.path:channel' or a UnitAddress, "
                                f"got {type(unit).__name__}")
    match = _UNIT.fullmatch(unit.strip())
    if match is None:
        shown = unit if len(unit) <= 60 else unit[:57] + "..."
        raise InvalidInputError(f"{name} {shown!r} is not 'module.path:channel' or "
                                "'module.path:channel@h,w' (e.g. features.0:3 or features.0:3@14,14)")
    pos = match.group("pos")
    return UnitAddress(match.group("path"), int(match.group("channel")),
                       None if pos is None else tuple(int(v) for v in pos.split(",")))


def find_module(model: nn.Module, path: str, name: str = "unit") -> nn.Module:
    """The submodule at ``path`` (``""``: ``model``); the error lists valid and close paths."""
    if not isinstance(path, str):
        raise InvalidInputError(f"{name}: a module path must be a str, got {type(path).__name__}")
    modules = dict(model.named_modules())
    if path not in modules:
        valid = [p for p in modules if p]
        shown = ", ".join(valid[:8]) + (f", ... ({len(valid)} in all)" if len(valid) > 8 else "")
        close = difflib.get_close_matches(path, valid, n=3, cutoff=0.6)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise InvalidInputError(f"{name}: {type(model).__name__} has no module {path!r}; valid "
                                f"paths: {shown or '(none)'}, or '' for the model's output{hint}")
    return modules[path]


def unit_index(unit: UnitAddress, shape: Sequence[int], name: str = "unit") -> tuple[int, ...]:
    """Indices into one sample's output of shape ``shape`` (no batch axis); errors name the range."""
    if len(shape) < 1:
        raise InvalidInputError(f"{name}: the output of {unit.path or 'the model'!r} has no channel "
                                f"axis (shape per sample {tuple(shape)})")
    channels = shape[0]
    if not 0 <= unit.channel < channels:
        raise InvalidInputError(f"{name}: channel {unit.channel} is out of range; "
                                f"{unit.path or 'the output'!r} has {channels} channels "
                                f"(valid 0..{channels - 1})")
    spatial = tuple(shape[1:])
    if unit.position is None:
        return (unit.channel, *(s // 2 for s in spatial))
    if len(unit.position) != len(spatial) or \
            any(not 0 <= p < s for p, s in zip(unit.position, spatial)):
        valid = "none (no spatial axes)" if not spatial else \
            " x ".join(f"0..{s - 1}" for s in spatial)
        raise InvalidInputError(f"{name}: position {unit.position} is out of range for "
                                f"{unit.path or 'the output'!r} (spatial shape {spatial}; valid "
                                f"positions {valid})")
    return (unit.channel, *unit.position)


# --------------------------------------------------------------------------- capture


class _Captured(BaseException):
    """Ends the forward once the addressed module has run: the rest is not needed.

    A BaseException so that a model's own ``except Exception`` does not swallow it.
    """


def hook_point(net: nn.Module, path: str, name: str = "target") -> nn.Module:
    """The module of ``net`` whose forward hook sees layer ``path``'s output: the tap a rewritten
    module keeps for it (see the module docstring), else the submodule at ``path``."""
    taps = getattr(net, "layer_taps", None)
    if isinstance(taps, dict) and path in taps:
        return taps[path]
    return find_module(net, path, name)


def capture_output(model: nn.Module, module: nn.Module, x: torch.Tensor, path: str,
                   name: str = "unit") -> torch.Tensor:
    """The output of ``module`` on the forward ``model(x)`` (its first call); the forward stops there.

    The hook is registered for this forward only and removed in ``finally``; the caller holds the
    model's lock (:func:`~pellucid.explain.base.model_lock`) where threads share the model.
    """
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        if not isinstance(output, torch.Tensor):
            raise InvalidInputError(f"{name}: {path or 'the model'!r} returns "
                                    f"{type(output).__name__}, not a tensor; address a module "
                                    "whose output is one tensor")
        captured.append(output)
        raise _Captured

    handle = module.register_forward_hook(hook)
    try:
        model(x)
    except _Captured:
        pass
    finally:
        handle.remove()
    if not captured:
        raise InvalidInputError(f"{name}: module {path!r} does not run in "
                                f"{type(model).__name__}'s forward")
    return captured[0]


def layer_output(net: nn.Module, path: str, x: torch.Tensor, name: str = "target") -> torch.Tensor:
    """``net(x)`` for ``path == ""``, else the output of layer ``path`` (:func:`hook_point`) on
    that forward, which stops once the layer has run."""
    if path == "":
        return net(x)
    return capture_output(net, hook_point(net, path, name), x, path, name)
