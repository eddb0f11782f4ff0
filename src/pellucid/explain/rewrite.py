"""Put the surrogate gates at every ReLU and max-pool call site of a model, and say what was changed.

Peers swap ``nn.ReLU`` child modules or hook them, which silently misses functional calls
(``F.relu``, ``torch.relu``, ``x.relu_()``: all 94 ReLUs of torchvision's Inception-v3) and breaks on
reused modules. A ``torch.fx`` trace sees every call site, so :func:`rewrite_for_pullback` returns a
*new* ``GraphModule`` (sharing the user's parameters, never modifying the user's model) in which every

- ReLU call (``nn.ReLU`` module, ``F.relu``, ``F.relu_``, ``torch.relu``, ``torch.relu_``,
  ``Tensor.relu``, ``Tensor.relu_``; inplace or not; reused or not) becomes :class:`ExcitationReLU`,
- max-pool call (``nn.MaxPool2d``, ``F.max_pool2d``, ``torch.max_pool2d``; no ``return_indices``)
  becomes :class:`ExcitationMaxPool2d`, and every adaptive max pool (``nn.AdaptiveMaxPool2d``,
  ``F.adaptive_max_pool2d``) :class:`ExcitationAdaptiveMaxPool2d`,
- call of a layer that declares its own excitation sites (the protocol below) runs its
  ``excitation_forward`` with the surrogate gates,

and a :class:`CoverageReport` lists every site (rewritten or left alone) with its kind, and counts
them: replaced sites and every other nonlinearity left untouched (GELU, SiLU, softmax, ...). When a
model cannot be traced, :func:`pullback_mode` falls back to swapping ``nn.ReLU``/``nn.MaxPool2d``/
``nn.AdaptiveMaxPool2d`` modules and self-rewriting layers inside a context manager (restored in
``finally``) and warns that functional calls cannot be reached.

Protocol: layers with their own excitation sites
------------------------------------------------
A layer whose gates and pools are not plain ``relu``/``max_pool2d`` calls (a max over poses, a
fused kernel, an input-dependent cache) declares them; the tracer then treats it as a leaf:

- ``excitation_sites() -> tuple[(kind, role), ...]``: every nonlinear site of its forward, with
  ``role`` ``"relu"`` (a ReLU gate), ``"max"`` (a max-type pool) or ``"kept"`` (left as it is:
  not a gate, or already smooth), e.g. ``(("max over poses", "max"), ("ReLU", "relu"))``;
- ``excitation_forward(gates, *args)`` (optional): its forward with ``gates.relu(z)`` at each
  "relu" site and ``gates.max(x, dim)`` at each "max" site (:class:`ExcitationGates`), returning
  bit-identical values. Without it the layer runs unchanged and its sites are reported as left alone.

Hidden layers: ``rewrite_for_pullback(model, layers=paths)`` also inserts an identity "tap" after the
first call of each named module (before any site is rewritten, so it follows the rewritten value)
and records them in ``gm.layer_taps``: a forward hook on the tap sees that layer's output even where
the rewritten graph no longer calls the module itself (see :mod:`pellucid.explain.layers`).
"""

from __future__ import annotations

import contextlib
import inspect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from pellucid._warnings import warn
from pellucid.errors import InvalidInputError, PellucidError
from pellucid.explain._guard import ThreadSafeTracer
from pellucid.explain.base import model_lock, preserved_state
from pellucid.explain.gates import (ExcitationAdaptiveMaxPool2d, ExcitationBatchNormReLU,
                                    ExcitationGates, ExcitationMaxPool2d, ExcitationReLU, Gate,
                                    PoolGeometry, check_temperature)

__all__ = ["CoverageReport", "PullbackCoverageWarning", "SelfRewrittenLayer", "Site", "Surrogate",
           "UntraceableModelError", "declares_sites", "model_fingerprint", "pullback_mode",
           "rewrite_for_pullback", "swap_modules", "warn_if_nothing_rewritten"]


class UntraceableModelError(PellucidError):
    """``torch.fx`` could not trace the model (data-dependent control flow, input checks, ...)."""


class PullbackCoverageWarning(UserWarning):
    """Some ReLU / max-pool call sites could not be reached (or there are none): the pullback is
    partly (or wholly) the plain gradient."""


# ----------------------------------------------------------------------------------------------
# What counts as a site (ordered tables, first match wins)
# ----------------------------------------------------------------------------------------------

# (callable, kind label, inplace?)
_RELU_FUNCTIONS = ((F.relu, "F.relu", None), (torch.relu, "torch.relu", False),
                   (torch.relu_, "torch.relu_", True))  # F.relu_ is torch.relu_
_RELU_METHODS = {"relu": False, "relu_": True}
_MAXPOOL_FUNCTIONS = ((F.max_pool2d, "F.max_pool2d"), (torch.max_pool2d, "torch.max_pool2d"))
_ADAPTIVE_FUNCTIONS = ((F.adaptive_max_pool2d, "F.adaptive_max_pool2d"),)


def _max_pool2d_signature(input, kernel_size, stride=None, padding=0, dilation=1,  # noqa: A002
                          ceil_mode=False, return_indices=False):
    """Argument names shared by ``F.max_pool2d`` and ``torch.max_pool2d``."""


def _adaptive_max_pool2d_signature(input, output_size, return_indices=False):  # noqa: A002
    """Argument names of ``F.adaptive_max_pool2d``."""


_MAXPOOL_SIG = inspect.signature(_max_pool2d_signature)
_ADAPTIVE_SIG = inspect.signature(_adaptive_max_pool2d_signature)


@dataclass(frozen=True)
class _Adaptive:
    """The ``output_size`` of an adaptive max pool (a hashable key, like :class:`PoolGeometry`)."""

    output_size: Any

# Nonlinear modules / functions that are left alone (reported, not replaced).
_OTHER_MODULES = (nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.ELU, nn.CELU, nn.SELU,
                  nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ReLU6, nn.Hardtanh, nn.Hardswish,
                  nn.Hardsigmoid, nn.Mish, nn.Threshold, nn.Softmax, nn.LogSoftmax, nn.Softmin,
                  nn.GLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
                  nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.FractionalMaxPool2d,
                  nn.LPPool2d, nn.MultiheadAttention)
_OTHER_FUNCTIONS = {f: f"F.{f.__name__}" for f in (
    F.gelu, F.silu, F.sigmoid, F.tanh, F.softplus, F.elu, F.celu, F.selu, F.leaky_relu, F.prelu,
    F.rrelu, F.relu6, F.hardtanh, F.hardswish, F.hardsigmoid, F.mish, F.threshold, F.softmax,
    F.log_softmax, F.softmin, F.glu, F.max_pool1d, F.max_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.scaled_dot_product_attention,
    F.max_pool2d_with_indices, F.adaptive_max_pool2d_with_indices)}
_OTHER_FUNCTIONS.update({f: f"torch.{f.__name__}" for f in (
    torch.sigmoid, torch.tanh, torch.softmax, torch.log_softmax, torch.clamp, torch.clip,
    torch.maximum, torch.minimum, torch.max, torch.min, torch.amax, torch.amin, torch.abs, torch.sign,
    torch.where)})
_OTHER_METHODS = {"sigmoid", "tanh", "softmax", "log_softmax", "clamp", "clamp_", "clamp_min",
                  "clamp_max", "clip", "abs", "sign", "max", "min", "amax", "amin", "sigmoid_", "tanh_"}

# what happened at a site
RELU_GATE, SOFT_MAX, LEFT_ALONE = "relu gate", "soft max", "left alone"


def declares_sites(module: nn.Module) -> bool:
    """Whether ``module`` follows the protocol (declares ``excitation_sites``; see the module doc)."""
    return callable(getattr(type(module), "excitation_sites", None))


# ----------------------------------------------------------------------------------------------
# Coverage report
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Site:
    """One nonlinear call site: where (module path or graph node), its kind, and what happened to it
    (``"relu gate"``, ``"soft max"`` or ``"left alone"``)."""

    name: str
    kind: str
    action: str

    @property
    def rewritten(self) -> bool:
        return self.action != LEFT_ALONE

    def __str__(self) -> str:
        return f"{self.name} ({self.kind}): {self.action}"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "kind": self.kind, "action": self.action}


@dataclass
class CoverageReport:
    """Which call sites got a surrogate gate, by kind, and what nonlinearity was left untouched.

    ``method`` is ``"fx"`` (every call site seen) or ``"module-replacement"`` (fallback: only
    ``nn.ReLU``/``nn.MaxPool2d`` modules; functional calls are not reached and cannot be counted).
    """

    model: str
    method: str
    relu: Counter = field(default_factory=Counter)  # kind -> replaced call sites
    maxpool: Counter = field(default_factory=Counter)
    untouched: Counter = field(default_factory=Counter)  # kind -> call sites left alone
    sites: list[Site] = field(default_factory=list)  # every site, rewritten or not, in call order
    fused_batchnorm: int = 0  # ReLU sites fed by an eval batch norm, fused to save memory
    note: str = ""

    @property
    def relu_sites(self) -> int:
        return sum(self.relu.values())

    @property
    def maxpool_sites(self) -> int:
        return sum(self.maxpool.values())

    @property
    def rewritten_sites(self) -> int:
        """ReLU plus max-pool call sites that got a surrogate gate (0: the plain gradient)."""
        return self.relu_sites + self.maxpool_sites

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "method": self.method, "relu_sites": self.relu_sites,
                "maxpool_sites": self.maxpool_sites, "relu": dict(self.relu),
                "maxpool": dict(self.maxpool), "untouched": dict(self.untouched),
                "fused_batchnorm": self.fused_batchnorm, "note": self.note,
                "sites": [site.to_dict() for site in self.sites]}

    def add(self, name: str, kind: str, action: str) -> None:
        """Record one site and count it under ``relu``, ``maxpool`` or ``untouched``."""
        counter = {RELU_GATE: self.relu, SOFT_MAX: self.maxpool}.get(action, self.untouched)
        counter[kind] += 1
        self.sites.append(Site(name, kind, action))

    def __str__(self) -> str:
        def fmt(c: Counter) -> str:
            return ", ".join(f"{k} x{v}" for k, v in sorted(c.items())) or "none"
        lines = [f"pullback coverage for {self.model} ({self.method}):",
                 f"  {self.rewritten_sites} call sites rewritten"
                 + (" (the pullback equals the plain gradient)" if not self.rewritten_sites else ""),
                 f"  ReLU call sites replaced:     {self.relu_sites} ({fmt(self.relu)})",
                 f"  max-pool call sites replaced: {self.maxpool_sites} ({fmt(self.maxpool)})",
                 f"  nonlinear call sites left untouched: {fmt(self.untouched)}"]
        if self.fused_batchnorm:
            lines.append(f"  ({self.fused_batchnorm} ReLU sites fused with the eval batch norm before "
                         "them: same gate, less memory)")
        if self.note:
            lines.append(f"  note: {self.note}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Tracing
# ----------------------------------------------------------------------------------------------

class _PullbackTracer(ThreadSafeTracer):
    """``torch.fx`` tracer that keeps self-rewriting layers as leaves and records, for every module
    path, what its first call returned (a ``Proxy`` for one tensor), for the hidden-layer taps."""

    def __init__(self) -> None:
        super().__init__()
        self.layer_outputs: dict[str, Any] = {}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return declares_sites(m) or super().is_leaf_module(m, module_qualified_name)

    def traced_call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        out = super().traced_call_module(m, forward, args, kwargs)
        self.layer_outputs.setdefault(self.path_of_module(m), out)
        return out


def _trace(model: nn.Module) -> tuple[fx.Graph, dict[str, Any]]:
    """The model's graph and its modules' first outputs; tracing runs Python code on the real
    modules, so their state is restored."""
    tracer = _PullbackTracer()
    try:
        with preserved_state(model):
            return tracer.trace(model), tracer.layer_outputs
    except Exception as e:  # fx raises TraceError, TypeError, RuntimeError, user errors, ...
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        raise UntraceableModelError(
            f"torch.fx cannot trace {type(model).__name__} ({reason}); pullback_mode falls back to "
            "module replacement, or make forward traceable (no data-dependent Python control flow "
            "or input checks on tensor values: wrap input checks with torch.fx.wrap, or let a layer "
            "declare its own excitation sites)") from e


# ----------------------------------------------------------------------------------------------
# Sites
# ----------------------------------------------------------------------------------------------

def _relu_site(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[str, bool] | None:
    """``(kind, inplace)`` if ``node`` is a ReLU call site."""
    if node.op == "call_module" and type(modules.get(node.target)) is nn.ReLU:
        return "nn.ReLU", bool(modules[node.target].inplace)
    if node.op == "call_function":
        for fn, kind, inplace in _RELU_FUNCTIONS:
            if node.target is fn:
                if inplace is None:  # F.relu(input, inplace=False)
                    inplace = bool(node.kwargs.get("inplace", node.args[1] if len(node.args) > 1 else False))
                return kind, inplace
    if node.op == "call_method" and node.target in _RELU_METHODS:
        return f"Tensor.{node.target}", _RELU_METHODS[node.target]
    return None


def _bound(signature: inspect.Signature, node: fx.Node) -> dict[str, Any] | None:
    """The call's arguments by name, or None when any but the input is computed in the graph."""
    bound = signature.bind(*node.args, **node.kwargs)
    bound.apply_defaults()
    a = bound.arguments
    if a["return_indices"] or any(isinstance(v, fx.Node) for k, v in a.items() if k != "input"):
        return None
    return a


def _maxpool_site(node: fx.Node, modules: dict[str, nn.Module]
                  ) -> tuple[str, PoolGeometry | _Adaptive] | None:
    """``(kind, geometry)`` if ``node`` is a replaceable 2-d (adaptive) max-pool call site."""
    if node.op == "call_module":
        m = modules.get(node.target)
        if type(m) is nn.MaxPool2d and not m.return_indices:
            return "nn.MaxPool2d", PoolGeometry.of(m.kernel_size, m.stride, m.padding, m.dilation,
                                                   m.ceil_mode)
        if type(m) is nn.AdaptiveMaxPool2d and not m.return_indices:
            return "nn.AdaptiveMaxPool2d", _Adaptive(_hashable(m.output_size))
    if node.op == "call_function":
        for fn, kind in _MAXPOOL_FUNCTIONS:
            if node.target is fn:
                a = _bound(_MAXPOOL_SIG, node)
                return None if a is None else (kind, PoolGeometry.of(
                    a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"]))
        for fn, kind in _ADAPTIVE_FUNCTIONS:
            if node.target is fn:
                a = _bound(_ADAPTIVE_SIG, node)
                return None if a is None else (kind, _Adaptive(_hashable(a["output_size"])))
    return None


def _hashable(size: Any) -> Any:
    return tuple(size) if isinstance(size, list) else size


def _pool_module(geometry: PoolGeometry | _Adaptive, tau: float, detach: bool) -> nn.Module:
    if isinstance(geometry, _Adaptive):
        return ExcitationAdaptiveMaxPool2d(geometry.output_size, tau, detach)
    return ExcitationMaxPool2d(geometry, tau, detach)


_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _fusable_batchnorm(source: Any, modules: dict[str, nn.Module]) -> nn.Module | None:
    """The batch norm module whose output feeds only this ReLU site, if any."""
    if (isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1
            and type(modules.get(source.target)) in _BATCHNORMS and len(source.args) == 1
            and not source.kwargs and isinstance(source.args[0], fx.Node)):
        return modules[source.target]
    return None


def _untouched_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    if node.op == "call_module":
        m = modules.get(node.target)
        if isinstance(m, _OTHER_MODULES):
            return f"nn.{type(m).__name__}" + ("(return_indices)" if getattr(m, "return_indices", False) else "")
    elif node.op == "call_function":
        if node.target in (F.max_pool2d, torch.max_pool2d, F.adaptive_max_pool2d):
            return f"F.{node.target.__name__}(return_indices/dynamic args)"
        return _OTHER_FUNCTIONS.get(node.target)
    elif node.op == "call_method" and node.target in _OTHER_METHODS:
        return f"Tensor.{node.target}"
    return None


def _site_name(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_module" else node.name


# ----------------------------------------------------------------------------------------------
# Layers with their own excitation sites
# ----------------------------------------------------------------------------------------------

class SelfRewrittenLayer(nn.Module):
    """``layer.excitation_forward(gates, *args)``: a layer that declares its own excitation sites,
    run with the surrogate gates (same forward values as ``layer(*args)``)."""

    def __init__(self, layer: nn.Module, gates: ExcitationGates) -> None:
        super().__init__()
        self.layer, self.gates = layer, gates

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.layer.excitation_forward(self.gates, *args, **kwargs)


def _layer_sites(layer: nn.Module, soften_max: bool) -> list[tuple[str, str]]:
    """``(kind, action)`` per site the layer declares; its "relu"/"max" sites are rewritten only if
    it has an ``excitation_forward`` (and "max" only with ``soften_max``)."""
    rewrites = callable(getattr(layer, "excitation_forward", None))
    sites = []
    for kind, role in layer.excitation_sites():
        action = {"relu": RELU_GATE, "max": SOFT_MAX if soften_max else LEFT_ALONE}.get(role, LEFT_ALONE)
        sites.append((f"{type(layer).__name__}: {kind}", action if rewrites else LEFT_ALONE))
    return sites


def _record_layer(report: CoverageReport, name: str, layer: nn.Module, soften_max: bool) -> bool:
    """Add the layer's sites to ``report``; whether any is rewritten (the layer must be swapped)."""
    sites = _layer_sites(layer, soften_max)
    for kind, action in sites:
        report.add(name, kind, action)
    return any(action != LEFT_ALONE for _, action in sites)


# ----------------------------------------------------------------------------------------------
# fx rewriting
# ----------------------------------------------------------------------------------------------

def rewrite_for_pullback(model: nn.Module, temperature: float = 0.3, gate: str | Gate = "sigmoid",
                         detach_pool_weights: bool = False, replace_maxpool: bool = True,
                         fuse_batchnorm: bool = True, layers: Sequence[str] = ()
                         ) -> tuple[fx.GraphModule, CoverageReport]:
    """A new ``GraphModule`` computing ``model``'s exact forward with surrogate gates in backward.

    The returned module shares ``model``'s parameters and submodules (no copy) but ``model`` itself
    is never modified. Raises :class:`UntraceableModelError` if ``torch.fx`` cannot trace it.
    Inplace sites keep their semantics: later readers of the overwritten tensor read the new output.
    ``fuse_batchnorm``: a ReLU fed only by a batch norm becomes one :class:`ExcitationBatchNormReLU`
    (same values and gate; saves only the batch norm's input, as plain autograd does).
    ``replace_maxpool``: also soften max pools and the "max" sites of self-rewriting layers.
    ``layers``: module paths whose outputs get a tap (``gm.layer_taps``, see the module docstring).
    """
    tau = check_temperature(temperature)
    graph, outputs = _trace(model)
    gm = fx.GraphModule(model, graph, class_name=f"Pullback{type(model).__name__}")
    gm.training = model.training  # attribute only: gm.train() would recurse into the user's modules
    gm.layer_taps = _insert_taps(gm, graph, outputs, layers, type(model).__name__)
    modules = dict(model.named_modules(remove_duplicate=False))
    report = CoverageReport(type(model).__name__, "fx")
    relu_name = _free_name(gm, "excitation_relu")
    relu_module = ExcitationReLU(gate, tau)
    gm.add_submodule(relu_name, relu_module)
    gates = ExcitationGates(relu_module.gate, tau, detach_pool_weights, replace_maxpool)
    pools: dict[PoolGeometry | _Adaptive, str] = {}
    order = {node: i for i, node in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        layer = modules.get(node.target) if node.op == "call_module" else None
        if layer is not None and declares_sites(layer):
            if _record_layer(report, _site_name(node), layer, replace_maxpool):
                name = _free_name(gm, f"excitation_{node.target.replace('.', '_')}")
                gm.add_submodule(name, SelfRewrittenLayer(layer, gates))
                _redirect(graph, node, name, node.args, node.kwargs)
            continue
        relu = _relu_site(node, modules)
        pool = _maxpool_site(node, modules) if (replace_maxpool and relu is None) else None
        if relu is not None:
            kind, inplace = relu
            report.add(_site_name(node), kind, RELU_GATE)
            target = relu_name
        elif pool is not None:
            kind, geometry = pool
            inplace = False
            report.add(_site_name(node), kind, SOFT_MAX)
            if geometry not in pools:
                pools[geometry] = _free_name(gm, f"excitation_maxpool{len(pools)}")
                gm.add_submodule(pools[geometry], _pool_module(geometry, tau, detach_pool_weights))
            target = pools[geometry]
        else:
            kind = _untouched_kind(node, modules)
            if kind is not None:
                report.add(_site_name(node), kind, LEFT_ALONE)
            continue
        source = node.args[0] if node.args else node.kwargs["input"]
        bn = _fusable_batchnorm(source, modules) if (relu is not None and fuse_batchnorm) else None
        if bn is not None:  # relu(bn(c)) -> one module that saves only c
            target = _free_name(gm, f"excitation_bn_relu_{source.target.replace('.', '_')}")
            gm.add_submodule(target, ExcitationBatchNormReLU(modules[source.target],
                                                             gm.get_submodule(relu_name)))
            report.fused_batchnorm += 1
            inplace, bn_node, source = False, source, source.args[0]
        new = _redirect(graph, node, target, (source,), {})
        if inplace and isinstance(source, fx.Node):  # readers after an inplace op see its output
            for user in list(source.users):
                if user is not new and order.get(user, -1) > order[node]:
                    user.replace_input_with(source, new)
        order[new] = order[node]
        if bn is not None:
            graph.erase_node(bn_node)
    graph.lint()
    gm.recompile()
    return gm, report


def _redirect(graph: fx.Graph, node: fx.Node, target: str, args: tuple, kwargs: dict) -> fx.Node:
    """Replace ``node`` by a call of submodule ``target`` on ``args``; returns the new node."""
    with graph.inserting_after(node):
        new = graph.call_module(target, args, kwargs)
    node.replace_all_uses_with(new)
    graph.erase_node(node)
    return new


class _LayerTap(nn.Identity):
    """Called on one layer's output in a rewritten module, so that a forward hook can read it."""


def _insert_taps(gm: fx.GraphModule, graph: fx.Graph, outputs: dict[str, Any], layers: Sequence[str],
                 model_name: str) -> dict[str, nn.Module]:
    """One :class:`_LayerTap` after the first output of each module in ``layers`` (``""``: none)."""
    taps: dict[str, nn.Module] = {}
    for path in dict.fromkeys(layers):
        if path == "":
            continue
        out = outputs.get(path)
        if not isinstance(out, fx.Proxy):
            why = ("is not called as a module in the traced forward (it may run inside a module the "
                   "trace does not enter)" if path not in outputs else "does not return one tensor")
            raise InvalidInputError(f"target: {model_name}'s module {path!r} {why}; address a "
                                    "module whose output is one tensor")
        name = _free_name(gm, "layer_tap")
        taps[path] = _LayerTap()
        gm.add_submodule(name, taps[path])
        with graph.inserting_after(out.node):
            graph.call_module(name, (out.node,))
    return taps


def warn_if_nothing_rewritten(report: CoverageReport) -> None:
    """Warn (:class:`PullbackCoverageWarning`) when no call site got a surrogate gate."""
    if report.rewritten_sites == 0:
        found = ("ReLU or max-pool call site" if report.method == "fx"
                 else "nn.ReLU or nn.MaxPool2d module")
        warn(f"{report.model}: 0 call sites rewritten (no {found} found), so the excitation "
             "pullback equals the plain gradient", PullbackCoverageWarning)


def _free_name(gm: nn.Module, base: str) -> str:
    name, i = base, 0
    while hasattr(gm, name):
        i += 1
        name = f"{base}_{i}"
    return name


# ----------------------------------------------------------------------------------------------
# Fallback: module replacement (temporary, restored in finally)
# ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def swap_modules(model: nn.Module, temperature: float = 0.3, gate: str | Gate = "sigmoid",
                 detach_pool_weights: bool = False, replace_maxpool: bool = True
                 ) -> Iterator[CoverageReport]:
    """Temporarily replace every ``nn.ReLU`` / ``nn.MaxPool2d`` / ``nn.AdaptiveMaxPool2d`` child of
    ``model``, and every self-rewriting layer, by its surrogate (restored in ``finally``).

    Each replaced child gets its own surrogate module (a forward hook on a path sees that child's
    calls only); a reused module is replaced once and stays reused. Functional calls are not
    reached. Entering twice is safe: the inner context finds nothing left to replace. The block
    holds ``model``'s lock (:func:`~pellucid.explain.base.model_lock`): explainers on ``model`` in
    other threads wait until the modules are restored.
    """
    tau = check_temperature(temperature)
    relu = ExcitationReLU(gate, tau)
    gates = ExcitationGates(relu.gate, tau, detach_pool_weights, replace_maxpool)
    report = CoverageReport(type(model).__name__, "module-replacement",
                            note="model could not be traced: functional relu/max_pool calls inside "
                                 "forward (F.relu, torch.relu, x.relu()) are NOT reached")
    with model_lock(model):
        yield from _swap_modules(model, gates, replace_maxpool, report)


def _replacement(child: nn.Module, gates: ExcitationGates, replace_maxpool: bool,
                 report: CoverageReport, name: str) -> nn.Module | None:
    """The surrogate of one child module (recording its sites), or None to keep it."""
    kind = f"nn.{type(child).__name__} (module)"
    if type(child) is nn.ReLU:
        report.add(name, kind, RELU_GATE)
        return ExcitationReLU(gates.gate, gates.temperature)
    if replace_maxpool and type(child) is nn.MaxPool2d and not child.return_indices:
        report.add(name, kind, SOFT_MAX)
        return ExcitationMaxPool2d(PoolGeometry.of(child.kernel_size, child.stride, child.padding,
                                                   child.dilation, child.ceil_mode),
                                   gates.temperature, gates.detach_pool_weights)
    if replace_maxpool and type(child) is nn.AdaptiveMaxPool2d and not child.return_indices:
        report.add(name, kind, SOFT_MAX)
        return ExcitationAdaptiveMaxPool2d(child.output_size, gates.temperature,
                                           gates.detach_pool_weights)
    if declares_sites(child):
        return SelfRewrittenLayer(child, gates) if _record_layer(report, name, child, replace_maxpool) \
            else None
    if isinstance(child, _OTHER_MODULES):
        report.add(name, kind, LEFT_ALONE)
    return None


def _swap_modules(model: nn.Module, gates: ExcitationGates, replace_maxpool: bool,
                  report: CoverageReport) -> Iterator[CoverageReport]:
    swaps: list[tuple[nn.Module, str, nn.Module, nn.Module]] = []
    new_of: dict[int, nn.Module] = {}  # a reused child gets one surrogate
    for parent_name, parent in model.named_modules(remove_duplicate=True):
        if declares_sites(parent) or isinstance(parent, SelfRewrittenLayer):
            continue  # its children run inside its own (rewritten) forward
        for name, child in parent._modules.items():
            if child is None or isinstance(child, SelfRewrittenLayer):
                continue
            if id(child) not in new_of:
                new = _replacement(child, gates, replace_maxpool, report,
                                   f"{parent_name}.{name}".lstrip("."))
                if new is None:
                    continue
                new_of[id(child)] = new
            swaps.append((parent, name, child, new_of[id(child)]))
    done: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for parent, name, child, new in swaps:
            parent._modules[name] = new
            done.append((parent, name, child))
        yield report
    finally:
        for parent, name, child in reversed(done):
            parent._modules[name] = child


# ----------------------------------------------------------------------------------------------
# pullback_mode
# ----------------------------------------------------------------------------------------------

@dataclass
class Surrogate:
    """The module to differentiate (``module(x)`` equals ``model(x)``) and its coverage report."""

    module: nn.Module
    coverage: CoverageReport

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)


@contextlib.contextmanager
def pullback_mode(model: nn.Module, temperature: float = 0.3, gate: str | Gate = "sigmoid",
                  detach_pool_weights: bool = False, replace_maxpool: bool = True,
                  fallback: bool = True, example_input: torch.Tensor | None = None
                  ) -> Iterator[Surrogate]:
    """``with pullback_mode(model) as s: s(x)`` has ``model``'s forward and the pullback's backward.

    Tries :func:`rewrite_for_pullback` (the user's model is untouched); if the model cannot be
    traced and ``fallback`` is true, warns and swaps modules for the duration of the block
    (restored in ``finally``, also on exceptions). With ``example_input`` the forward is checked
    to be bit-identical to ``model``'s before the block runs.
    """
    try:
        module, report = rewrite_for_pullback(model, temperature, gate, detach_pool_weights,
                                              replace_maxpool)
        warn_if_nothing_rewritten(report)
        context: contextlib.AbstractContextManager = contextlib.nullcontext(report)
    except UntraceableModelError as e:
        if not fallback:
            raise
        warn(f"{e}; falling back to replacing nn.ReLU/nn.MaxPool2d modules: functional "
             "calls are not reached", PullbackCoverageWarning)
        module = model
        context = swap_modules(model, temperature, gate, detach_pool_weights, replace_maxpool)
    want = None
    if example_input is not None:
        with torch.no_grad():
            want = model(example_input)  # before any module is swapped
    with context as report:
        surrogate = Surrogate(module, report)
        if want is not None:
            check_forward_unchanged(surrogate, example_input, want)
        yield surrogate


def check_forward_unchanged(surrogate: Surrogate, x: torch.Tensor, want: Any) -> float:
    """Max abs difference of the surrogate's outputs on ``x`` and ``want``; raises unless it is 0."""
    with torch.no_grad():
        got = surrogate(x)
    got_flat, want_flat = _flat(got), _flat(want)
    if len(got_flat) != len(want_flat) or any(a.shape != b.shape for a, b in zip(got_flat, want_flat)):
        raise PellucidError(f"the pullback model of {surrogate.coverage.model} returns differently "
                            "shaped outputs; please report this model")
    diff = max((float((a - b).abs().max()) for a, b in zip(got_flat, want_flat)), default=0.0)
    if diff != 0.0:
        raise PellucidError(f"the pullback model of {surrogate.coverage.model} changed the forward "
                            f"pass (max abs diff {diff:.3g}); please report this model")
    return diff


def _flat(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flat(o)]
    return []


# ----------------------------------------------------------------------------------------------
# Model fingerprint: is a rewritten copy still the model's?
# ----------------------------------------------------------------------------------------------

_SCALARS = (bool, int, float, str, type(None))


def model_fingerprint(model: nn.Module) -> tuple:
    """What a rewritten copy depends on: the module tree (names, types, ids, ``training`` flags),
    every parameter, buffer and tensor attribute (id, storage pointer, shape, dtype, device), every
    plain scalar attribute (``kernel_size``, ``inplace``, a ``scale`` read in ``forward``) and the
    identity of function attributes (``self.act = F.relu``).

    Two fingerprints differ when a layer was swapped, weights were loaded into new parameter
    objects (``load_state_dict(..., assign=True)``, ``p.data = ...``), the model was moved or cast,
    or an attribute that ``torch.fx`` bakes into the graph changed. In-place edits of parameter
    values (``load_state_dict`` without ``assign``, ``p.data.copy_``) keep it: the rewritten copy
    shares those tensors. One pass over the modules (a fraction of a millisecond per hundred modules).
    """
    items: list = []
    for name, m in model.named_modules(remove_duplicate=False):
        items.append((name, id(m), type(m), m.training))
        for key, value in m.__dict__.items():
            if key in ("_parameters", "_buffers"):
                items.extend((key, k, _tensor_key(t)) for k, t in value.items())
            elif key.startswith("_") or key == "training":
                continue
            elif isinstance(value, torch.Tensor):
                items.append((key, _tensor_key(value)))
            elif isinstance(value, _SCALARS):
                items.append((key, type(value), _scalar_key(value)))
            elif isinstance(value, (tuple, list)) and all(isinstance(v, _SCALARS) for v in value):
                items.append((key, type(value), tuple(map(_scalar_key, value))))
            elif callable(value) and not isinstance(value, nn.Module):
                items.append((key, "callable", id(value)))
    return tuple(items)


def _scalar_key(value: Any) -> Any:
    return value if value == value else repr(value)  # NaN != NaN would rebuild on every call


def _tensor_key(t: torch.Tensor | None) -> tuple | None:
    if t is None:
        return None
    try:
        pointer = t.data_ptr()
    except RuntimeError:  # tensors without storage (sparse, ...)
        pointer = None
    return id(t), pointer, tuple(t.shape), t.dtype, t.device
