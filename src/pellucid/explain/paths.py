r"""Activation paths and their stability during training (the pullback paper's hypothesis).

The excitation-pullback paper explains why pullbacks are faithful by a hypothesis: the
*activation paths* of a ReLU network, the binary pattern of which gates are open, stabilise early
in training and the network then behaves like a (gated) linear model along them. This module
records those patterns and measures how stable they are.

* :func:`activation_patterns`: for one forward pass, the pattern of every ReLU-like call site
  (``P = 1[z > 0]`` at the site's output, for ``relu``/``relu_``/``leaky_relu`` called as a module,
  a function or a tensor method) and the argmax index of every max-pool window
  (``max_pool1d/2d/3d``, ``adaptive_max_pool1d/2d``), in call order. Sites are found by
  intercepting the calls (:class:`torch.overrides.TorchFunctionMode`), so every call site is seen,
  also in models ``torch.fx`` cannot trace and in functional calls inside custom layers. A model
  whose discrete choices are not ReLUs or pools can expose them: if it has a ``trace(x)`` method
  returning a dict, its integer entries named ``*_pose`` (the white-box network's best pose per
  feature) are pattern sites too (``pose:conv_pose``, ...).
* :func:`pattern_agreement`: the Hamming similarity of two patterns, ``S(P, Q) = 1 - d_H(P, Q) /
  |P|`` (the share of gates, and of pool argmaxes, that agree), overall and per site.
* :class:`PathStabilityTracker`: records the patterns on a fixed probe set after each epoch
  (usable as ``pellucid.train.trainer.fit(..., on_epoch=tracker)``) and reports, per epoch ``e``,
  ``S(P_e, P_{e-1})`` (stability since the last epoch) and ``S(P_e, P_final)`` (distance to the
  final paths).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from pellucid.data.validation import check_model_input
from pellucid.errors import InvalidInputError
from pellucid.explain.base import check_inputs, model_lock, preserved_state

__all__ = ["ActivationPatterns", "PathStabilityTracker", "activation_patterns", "pattern_agreement"]

# ReLU-like gates: the pattern is the sign of the output (leaky ReLU: of its input, the same sign)
_GATES = {F.relu, torch.relu, torch.Tensor.relu, F.relu_, torch.relu_, torch.Tensor.relu_,
          F.leaky_relu, F.leaky_relu_, torch._C._nn.leaky_relu, torch._C._nn.leaky_relu_}
# max pools, by the function that also returns the argmax index of each window
_POOLS = {
    F.max_pool1d: F.max_pool1d_with_indices, F.max_pool2d: F.max_pool2d_with_indices,
    F.max_pool3d: F.max_pool3d_with_indices, torch.max_pool1d: F.max_pool1d_with_indices,
    torch.max_pool2d: F.max_pool2d_with_indices, torch.max_pool3d: F.max_pool3d_with_indices,
    F.adaptive_max_pool1d: F.adaptive_max_pool1d_with_indices,
    F.adaptive_max_pool2d: F.adaptive_max_pool2d_with_indices,
}

_WITH_INDICES = set(_POOLS.values())


@dataclass
class ActivationPatterns:
    """The patterns of one forward pass: ``sites`` (``"relu:0"``, ``"max_pool2d:1"``, ... in call
    order) and ``patterns`` (one tensor per site, first axis the batch: ``bool`` gates for ReLU
    sites, ``int64`` window argmaxes for pools)."""

    sites: list[str] = field(default_factory=list)
    patterns: list[torch.Tensor] = field(default_factory=list)

    @property
    def n_bits(self) -> int:
        """Gates plus pool windows: the length ``|P|`` of the pattern."""
        return sum(p.numel() for p in self.patterns)

    def to_dict(self) -> dict[str, Any]:
        return {"sites": list(self.sites), "sizes": [p[0].numel() if len(p) else 0 for p in self.patterns]}


class _Recorder(TorchFunctionMode):
    """Records each gate's ``output > 0`` and each max pool's argmax indices as the calls happen."""

    def __init__(self) -> None:
        super().__init__()
        self.result = ActivationPatterns()
        self._counts: dict[str, int] = {}

    def _add(self, kind: str, pattern: torch.Tensor) -> None:
        index = self._counts.get(kind, 0)
        self._counts[kind] = index + 1
        self.result.sites.append(f"{kind}:{index}")
        self.result.patterns.append(pattern.detach().clone())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _POOLS:  # run the pool with its indices, return what the caller asked for
            wants_indices = kwargs.pop("return_indices", False)
            out, indices = _POOLS[func](*args, **kwargs)
            self._add(func.__name__, indices)
            return (out, indices) if wants_indices else out
        out = func(*args, **kwargs)
        if func in _WITH_INDICES:  # F.max_pool2d(..., return_indices=True) lands here
            self._add(func.__name__.removesuffix("_with_indices"), out[1])
        elif func in _GATES and isinstance(out, torch.Tensor):
            self._add("relu" if "relu" in func.__name__ and "leaky" not in func.__name__ else
                      "leaky_relu", out > 0)
        return out


def activation_patterns(model: nn.Module, inputs: torch.Tensor) -> ActivationPatterns:
    """The activation pattern of every ReLU-like site and max pool of ``model`` on ``inputs``
    (one forward pass in eval behaviour as the model is; the model's lock is held and its state
    restored, the caller's tensor untouched). A model without such sites gives an empty pattern."""
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    x = check_inputs(inputs)
    check_model_input(model, x, name="inputs")
    with model_lock(model), preserved_state(model), torch.no_grad():
        recorder = _Recorder()
        with recorder:
            model(x.detach().clone())
        result = recorder.result
        trace = getattr(model, "trace", None)
        if callable(trace):
            for name, value in trace(x.detach().clone()).items():
                if name.endswith("_pose") and isinstance(value, torch.Tensor) and \
                        not value.is_floating_point():
                    result.sites.append(f"pose:{name}")
                    result.patterns.append(value.detach().clone())
    return result


def pattern_agreement(a: ActivationPatterns, b: ActivationPatterns) -> dict[str, Any]:
    r"""Hamming similarity ``S(P, Q) = 1 - d_H(P, Q) / |P|`` of two patterns of the same model on
    the same inputs: ``{"overall": S, "sites": {site: S_site}}``. Both must have the same sites
    and shapes (the same architecture and inputs)."""
    if not isinstance(a, ActivationPatterns) or not isinstance(b, ActivationPatterns):
        raise InvalidInputError("pattern_agreement compares two ActivationPatterns "
                                "(from activation_patterns)")
    if a.sites != b.sites or [p.shape for p in a.patterns] != [p.shape for p in b.patterns]:
        raise InvalidInputError(f"the patterns differ in sites or shapes ({len(a.sites)} vs "
                                f"{len(b.sites)} sites); record both on the same model and inputs")
    if not a.sites:
        raise InvalidInputError("the model has no ReLU-like site or max pool: there is no "
                                "activation path to compare")
    same = [(p == q).sum() for p, q in zip(a.patterns, b.patterns)]
    sizes = [p.numel() for p in a.patterns]
    return {"overall": float(sum(same)) / sum(sizes),
            "sites": {s: float(k) / n for s, k, n in zip(a.sites, same, sizes)}}


class PathStabilityTracker:
    """Activation patterns on a fixed probe set after each epoch, and their stability.

    Call it as ``tracker(model, row)`` after each epoch (``fit(..., on_epoch=tracker)``), or
    :meth:`record` directly. ``measure(model, probe)``, when given, is called too and its float
    result kept per epoch (e.g. the faithfulness of pullbacks on the probe set), so stability and
    faithfulness can be compared epoch by epoch.
    """

    def __init__(self, probe: torch.Tensor,
                 measure: Callable[[nn.Module, torch.Tensor], float] | None = None) -> None:
        self.probe = check_inputs(probe).detach().clone()
        if measure is not None and not callable(measure):
            raise InvalidInputError(f"measure must be a callable (model, probe) -> float, got "
                                    f"{type(measure).__name__}")
        self.measure = measure
        self.epochs: list[int] = []
        self.patterns: list[ActivationPatterns] = []
        self.measured: list[float] = []

    def record(self, model: nn.Module, epoch: int | None = None) -> None:
        was_training = model.training
        model.eval()  # the paths of the model as it predicts
        try:
            self.patterns.append(activation_patterns(model, self.probe))
            if self.measure is not None:
                value = float(self.measure(model, self.probe))
                if not math.isfinite(value):
                    raise InvalidInputError(f"measure returned {value} at epoch {epoch}")
                self.measured.append(value)
        finally:
            model.train(was_training)
        self.epochs.append(len(self.epochs) + 1 if epoch is None else int(epoch))

    def __call__(self, model: nn.Module, row: dict[str, Any]) -> None:
        self.record(model, row.get("epoch") if isinstance(row, dict) else None)

    def summary(self) -> list[dict[str, Any]]:
        """Per recorded epoch: ``epoch``, ``stability_prev`` (``S(P_e, P_{e-1})``, ``None`` for the
        first), ``stability_final`` (``S(P_e, P_last)``) and ``measure`` when one was given."""
        if not self.patterns:
            raise InvalidInputError("no epoch recorded yet: call the tracker after each epoch")
        final = self.patterns[-1]
        rows = []
        for i, (epoch, pattern) in enumerate(zip(self.epochs, self.patterns)):
            row = {"epoch": epoch,
                   "stability_prev": None if i == 0 else
                   pattern_agreement(pattern, self.patterns[i - 1])["overall"],
                   "stability_final": pattern_agreement(pattern, final)["overall"]}
            if self.measured:
                row["measure"] = self.measured[i]
            rows.append(row)
        return rows
