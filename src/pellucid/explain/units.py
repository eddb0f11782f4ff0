"""What a hidden unit detects: its input gradient on Gaussian noise, and the gradient
representation identity ``u(x) = <x, grad_x u(x)>``.

* :func:`unit_gradients_on_noise`: for a unit ``u`` (a module's output channel, at one position
  of a spatial output), the input gradients ``g_i = d u(z_i) / d z_i`` on ``n`` Gaussian-noise
  images ``z_i ~ N(mean, std^2)`` (clamped to the model's value range when one is given). The
  noise carries no pattern, so whatever structure ``g_i`` shows is the unit's own: a unit with an
  input-independent template shows the same picture on every draw.
* :func:`noise_gradient_alignment`: how consistent those pictures are, the mean pairwise cosine
  similarity of the ``g_i`` (1: one fixed template; about 0: the gradient follows the noise).
* :func:`gradient_representation_check`: for a network without biases whose layers are linear,
  ReLU or max-pool, every unit is positively homogeneous of degree 1, so by Euler's identity
  ``u(x) = <x, grad_x u(x)>`` (the gradient "represents" the unit). The check measures the
  relative violation for every unit of the chosen layers.

Units are addressed as ``"module.path:channel"`` or ``"module.path:channel@h,w"`` (see
:class:`UnitAddress`); ``module.path`` is a name from ``model.named_modules()`` (``""``: the
model's output). Every forward holds the model's lock and restores its state
(:func:`~pellucid.explain.base.model_lock`, :func:`~pellucid.explain.base.preserved_state`); hooks
are removed also on errors; the caller's tensors are never modified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

from pellucid._device import draw_device
from pellucid.data.validation import check_model_input, check_value_range
from pellucid.errors import InvalidInputError
from pellucid.explain._guard import model_lock, preserved_state, warn_if_training
from pellucid.explain.layers import (UnitAddress, capture_output, find_module, parse_unit,
                                     unit_index)

__all__ = ["LayerCheck", "RepresentationCheck", "UnitAddress", "UnitGradients", "check_unit",
           "gradient_alignment", "gradient_representation_check", "model_dtype_device",
           "module_output_shapes",
           "noise_gradient_alignment", "noise_inputs", "parse_unit", "unit_gradients_on_noise"]

# what batch-norm/dropout layers in training mode do to unit gradients and Jacobians
_TRAINING_EFFECT = ("they couple the samples and change the gradients; their statistics are restored "
                    "afterwards")


# --------------------------------------------------------------------------- addresses


def check_unit(model: nn.Module, unit: "str | UnitAddress",
               shapes: dict[str, tuple[int, ...] | None], name: str = "unit") -> UnitAddress:
    """``unit`` resolved against the per-sample output ``shapes`` of a probe forward
    (:func:`module_output_shapes`): the module exists, runs and returns one tensor, and the
    channel and position are in range; a spatial unit without a position gets the centre."""
    address = parse_unit(unit, name)
    find_module(model, address.path, name)
    if address.path not in shapes:
        raise InvalidInputError(f"{name}: module {address.path!r} does not run in "
                                f"{type(model).__name__}'s forward")
    shape = shapes[address.path]
    if shape is None:
        raise InvalidInputError(f"{name}: {address.path or 'the model'!r} does not return one "
                                "tensor; address a module whose output is one tensor")
    index = unit_index(address, shape, name)
    return UnitAddress(address.path, address.channel, tuple(index[1:]) or None)


# --------------------------------------------------------------------------- capture


def model_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of the model's first floating parameter or buffer (else the default
    dtype on the CPU)."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype, t.device
    return torch.get_default_dtype(), torch.device("cpu")


def module_output_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...] | None]:
    """Every module's output shape per sample (no batch axis) on one forward of ``x``, in call
    order of first use; ``None`` for outputs that are not one tensor. Modules that do not run are
    left out. Holds the model's lock; the model's state is restored; no gradients are recorded."""
    shapes: dict[str, tuple[int, ...] | None] = {}
    handles = []

    def recorder(path: str):
        def hook(_module, _inputs, output):
            if path not in shapes:
                shapes[path] = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else None
        return hook

    with model_lock(model), preserved_state(model), torch.no_grad():
        try:
            for path, module in model.named_modules():
                handles.append(module.register_forward_hook(recorder(path)))
            model(x.detach().clone())
        finally:
            for h in handles:
                h.remove()
    return shapes


# --------------------------------------------------------------------------- noise gradients


@dataclass(frozen=True)
class UnitGradients:
    """``gradients[i] = d u(inputs[i]) / d inputs[i]`` ``(n, *input_shape)``, ``values[i] =
    u(inputs[i])`` ``(n,)``, for the noise ``inputs`` ``(n, *input_shape)`` and the resolved
    ``unit`` (its position filled in)."""

    unit: UnitAddress
    gradients: torch.Tensor
    inputs: torch.Tensor
    values: torch.Tensor
    mean: float
    std: float
    value_range: tuple[float, float] | None


def _finite(value, name: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (positive and value <= 0):
        raise InvalidInputError(f"{name} must be a finite number{' > 0' if positive else ''}, "
                                f"got {value!r}")
    return float(value)


def _check_shape(model: nn.Module, input_shape) -> tuple[int, ...]:
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
    if input_shape is None:
        raise InvalidInputError(f"input_shape is required for {type(model).__name__}: the shape of "
                                "one input without the batch axis, e.g. (1, 28, 28)")
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise InvalidInputError(f"input_shape must be a tuple of ints, got {input_shape!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise InvalidInputError(f"input_shape must be non-empty with every size >= 1, got {shape}")
    return shape


def noise_inputs(n: int, input_shape: Sequence[int], seed: int = 0, mean: float = 0.0,
                 std: float = 1.0, value_range: tuple[float, float] | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(n, *input_shape)`` draws of ``clamp(N(mean, std^2), value_range)``.

    Drawn in float64 on the CPU from a generator seeded with ``seed``, then cast: the same seed
    gives the same noise (up to rounding) on every device and dtype.
    """
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn((n, *input_shape), generator=generator, dtype=torch.float64,
                    device=draw_device(generator)) * std + mean
    if value_range is not None:
        z = z.clamp(*value_range)
    return z.to(dtype=dtype, device=device)


def unit_gradients_on_noise(model: nn.Module, unit: "str | UnitAddress", n: int = 8, seed: int = 0,
                            std: float | None = None, mean: float | None = None, *,
                            input_shape: Sequence[int] | None = None,
                            value_range: tuple[float, float] | None = None) -> UnitGradients:
    """Input gradients ``g_i = grad_z u(z)|_{z = z_i}`` of one unit on ``n`` noise images.

    ``z_i = clamp(mean + std * eps_i, lo, hi)``, ``eps_i ~ N(0, I)`` from a generator seeded with
    ``seed`` (:func:`noise_inputs`); the clamp applies only when ``value_range = (lo, hi)`` is
    given. Defaults: ``mean`` the centre of ``value_range`` (else 0), ``std`` a quarter of its width
    (else 1), so about 95 % of the draws lie inside the range before the clamp. ``input_shape``
    (one input, no batch axis) defaults to ``model.input_shape`` where the model has one.

    ``unit``: ``"module.path:channel[@h,w]"`` or a :class:`UnitAddress`; a spatial output without
    a position is read at its centre. A forward hook on the module captures its output and stops
    the forward there. The ``n`` draws go through the model as one batch, so the gradients are
    per-sample only for a model whose samples do not interact (eval mode; a warning otherwise).
    Noise and gradients have the dtype and device of the model's parameters.
    """
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    address = parse_unit(unit)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidInputError(f"n (the number of noise images) must be an int >= 1, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise InvalidInputError(f"seed must be an int in 0..2**64-1, got {seed!r}")
    shape = _check_shape(model, input_shape)
    bounds = check_value_range(value_range)
    if std is None:
        std = (bounds[1] - bounds[0]) / 4 if bounds else 1.0
    if mean is None:
        mean = (bounds[0] + bounds[1]) / 2 if bounds else 0.0
    std, mean = _finite(std, "std", positive=True), _finite(mean, "mean")
    module = find_module(model, address.path, "unit")
    warn_if_training(model, _TRAINING_EFFECT)
    dtype, device = model_dtype_device(model)
    z = noise_inputs(n, shape, seed, mean, std, bounds, dtype, device)
    with model_lock(model), preserved_state(model), torch.enable_grad():
        leaf = z.clone().requires_grad_(True)
        output = capture_output(model, module, leaf, address.path, "unit")
        index = unit_index(address, tuple(output.shape[1:]), "unit")
        values = output[(slice(None), *index)]
        if not values.requires_grad:  # a unit that does not depend on the input
            grads = torch.zeros_like(leaf)
        else:
            (grads,) = torch.autograd.grad(values.sum(), leaf, allow_unused=True)
            grads = torch.zeros_like(leaf) if grads is None else grads
    resolved = UnitAddress(address.path, address.channel, tuple(index[1:]) or None)
    return UnitGradients(resolved, grads.detach(), z, values.detach(), mean, std, bounds)


def gradient_alignment(gradients: torch.Tensor) -> float:
    """Mean pairwise cosine similarity ``A = 2 / (n (n - 1)) sum_{i < j} cos(g_i, g_j)`` of ``n >= 2``
    gradients ``(n, ...)``.

    ``cos(g_i, g_j) = <g_i, g_j> / (|g_i| |g_j|)``, taken as 0 where a gradient is 0 (a dead unit
    shows no template). Computed from the Gram matrix of the unit vectors:
    ``A = (sum_ij <gh_i, gh_j> - sum_i |gh_i|^2) / (n (n - 1))``.
    """
    if not isinstance(gradients, torch.Tensor) or gradients.dim() < 2 or gradients.shape[0] < 2:
        shape = tuple(gradients.shape) if isinstance(gradients, torch.Tensor) else type(gradients).__name__
        raise InvalidInputError(f"gradients must be a tensor (n, ...) with n >= 2, got {shape}")
    g = gradients.detach().flatten(1).double()
    norms = g.norm(dim=1, keepdim=True)
    unit = torch.where(norms > 0, g / norms.clamp_min(torch.finfo(g.dtype).tiny), torch.zeros_like(g))
    n = g.shape[0]
    gram = unit @ unit.T
    return float((gram.sum() - gram.diagonal().sum()) / (n * (n - 1)))


def noise_gradient_alignment(model: nn.Module, unit: "str | UnitAddress", n: int = 8, seed: int = 0,
                             std: float | None = None, mean: float | None = None, *,
                             input_shape: Sequence[int] | None = None,
                             value_range: tuple[float, float] | None = None) -> float:
    """Consistency of a unit's template across noise draws: the mean pairwise cosine similarity
    ``A = 2 / (n (n - 1)) sum_{i < j} cos(g_i, g_j)`` of its noise gradients ``g_i``
    (:func:`unit_gradients_on_noise`, same arguments; ``n >= 2``).

    ``A = 1`` for a linear unit ``u(x) = <w, x>`` (every ``g_i = w``); ``A`` is about 0 (of order
    ``1 / sqrt(dim)``) when the gradient follows the noise, e.g. ``u(x) = |x|^2 / 2`` on centred
    noise (``g_i = z_i``); a unit whose template flips sign from draw to draw also averages out.
    High ``A`` is what the research log calls "aligned gradients on noise".
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise InvalidInputError(f"n must be an int >= 2 to compare noise gradients, got {n!r}")
    result = unit_gradients_on_noise(model, unit, n, seed, std, mean, input_shape=input_shape,
                                     value_range=value_range)
    return gradient_alignment(result.gradients)


# --------------------------------------------------------------------------- representation check


@dataclass(frozen=True)
class LayerCheck:
    """The identity ``u(x) = <x, grad_x u(x)>`` on every unit of one layer.

    ``max_relative_error = max_{b, k} |u_k(x_b) - <x_b, grad u_k(x_b)>| / (|u_k(x_b)| + tiny)``
    over samples ``b`` and units ``k`` (``tiny = eps(dtype) * max_{b, k} |u_k(x_b)|``, so that a
    unit at 0 does not divide by 0); ``worst_unit``: its flat unit index; ``holds``: ``<= tol``.
    """

    path: str
    shape: tuple[int, ...]
    units: int
    max_relative_error: float
    max_abs_error: float
    worst_unit: int
    holds: bool

    def to_dict(self) -> dict:
        return {"path": self.path, "shape": list(self.shape), "units": self.units,
                "max_relative_error": self.max_relative_error, "max_abs_error": self.max_abs_error,
                "worst_unit": self.worst_unit, "holds": self.holds}


@dataclass(frozen=True)
class RepresentationCheck:
    """Per-layer results of :func:`gradient_representation_check` (``str()`` is a table)."""

    layers: tuple[LayerCheck, ...]
    tol: float
    method: str
    dtype: str
    samples: int
    skipped: tuple[str, ...] = field(default=())

    @property
    def holds(self) -> bool:
        """Whether the identity holds (``<= tol``) on every checked layer."""
        return all(layer.holds for layer in self.layers)

    def __getitem__(self, path: str) -> LayerCheck:
        for layer in self.layers:
            if layer.path == path:
                return layer
        raise KeyError(path)

    def to_dict(self) -> dict:
        return {"tol": self.tol, "method": self.method, "dtype": self.dtype, "samples": self.samples,
                "holds": self.holds, "layers": [layer.to_dict() for layer in self.layers],
                "skipped": list(self.skipped)}

    def __str__(self) -> str:
        width = max([len("layer"), *(len(layer.path or "(output)") for layer in self.layers)])
        lines = [f"u(x) = <x, grad u(x)> on {self.samples} samples ({self.dtype}, {self.method}), "
                 f"tol {self.tol:g}",
                 f"{'layer':<{width}}  {'shape':<16} {'units':>7}  {'max rel err':>11}  holds"]
        for layer in self.layers:
            shape = "x".join(map(str, layer.shape)) or "()"
            lines.append(f"{layer.path or '(output)':<{width}}  {shape:<16} {layer.units:>7}  "
                         f"{layer.max_relative_error:>11.3e}  {'yes' if layer.holds else 'NO'}")
        if self.skipped:
            lines.append(f"skipped (output not one float tensor): {', '.join(self.skipped)}")
        return "\n".join(lines)


def _layer_errors(u: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Relative and absolute errors ``(B, U)`` of ``s`` against ``u`` and the layer's tiny."""
    tiny = torch.finfo(u.dtype).eps * float(u.abs().max()) if u.numel() else 0.0
    tiny = max(tiny, torch.finfo(u.dtype).tiny)
    err = (u - s).abs()
    return err / (u.abs() + tiny), err, tiny


def _summarise(path: str, shape: tuple[int, ...], rel: torch.Tensor, err: torch.Tensor,
               tol: float) -> LayerCheck:
    units = rel.shape[1]
    if rel.numel() == 0:
        return LayerCheck(path, shape, units, 0.0, 0.0, 0, True)
    worst = int(rel.amax(0).argmax())
    max_rel = float(rel.max())
    return LayerCheck(path, shape, units, max_rel, float(err.max()), worst,
                      bool(max_rel <= tol))  # NaN fails


def _jvp_outputs(model: nn.Module, x: torch.Tensor, paths: Sequence[str]
                 ) -> dict[str, tuple[torch.Tensor, torch.Tensor] | None]:
    """``{path: (u(x), <x, grad u(x)>)}`` for every unit of every layer, in one forward-mode pass.

    ``<x, grad_x u(x)>`` is the directional derivative of ``u`` along ``x``, i.e. the Jacobian-vector
    product ``J_u(x) x``: a dual input with tangent ``x`` gives it for all units of all layers at
    once. Outputs are copied in the hook (a later in-place op such as ``ReLU(inplace=True)`` would
    otherwise change them).
    """
    modules = dict(model.named_modules())
    found: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {}
    handles = []

    def recorder(path: str):
        def hook(_module, _inputs, output):
            if path in found:
                return  # a module called twice: its first call counts
            if not isinstance(output, torch.Tensor) or not output.is_floating_point():
                found[path] = None  # not one float tensor: no gradient to check
                return
            primal, tangent = fwAD.unpack_dual(output)
            tangent = torch.zeros_like(primal) if tangent is None else tangent
            found[path] = (primal.detach().clone(), tangent.detach().clone())
        return hook

    try:
        for path in paths:
            handles.append(modules[path].register_forward_hook(recorder(path)))
        with torch.no_grad(), fwAD.dual_level():  # no_grad: forward AD needs no backward graph
            model(fwAD.make_dual(x, x))
    finally:
        for h in handles:
            h.remove()
    return found


def _vjp_layer(model: nn.Module, module: nn.Module, x: torch.Tensor, path: str,
               chunk_elements: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(u(x), <x, grad u(x)>)`` ``(B, U)`` for one layer, from each unit's full input gradient.

    ``k`` units per backward pass: the batch is stacked ``k`` times and copy ``j`` back-propagates
    a one-hot cotangent on unit ``u0 + j``, so one backward gives ``k`` gradients ``(k, B, D)``.
    This needs only reverse mode (custom autograd Functions without a ``jvp`` or vmap rule work)
    and keeps memory to about ``chunk_elements`` gradient entries per pass.
    """
    b = x.shape[0]
    d = x[0].numel()
    with torch.no_grad():
        probe = capture_output(model, module, x, path, "layers")
    if not probe.is_floating_point():
        return None  # integer outputs (indices, counts) have no gradient to check
    units = probe[0].numel()
    if units == 0:
        empty = probe.new_zeros(b, 0)
        return empty, empty
    k = max(1, min(units, chunk_elements // max(1, b * d)))
    u_all = probe.reshape(b, units).detach()
    s_all = torch.empty_like(u_all)
    for start in range(0, units, k):  # chunks of units, each one batched backward
        count = min(k, units - start)
        leaf = x.repeat(count, *([1] * (x.dim() - 1))).requires_grad_(True)  # (count * B, ...)
        out = capture_output(model, module, leaf, path, "layers").reshape(count, b, units)
        picked = torch.arange(start, start + count, device=out.device)
        cotangent = torch.zeros_like(out)
        cotangent[torch.arange(count, device=out.device), :, picked] = 1
        if not out.requires_grad:
            s_all[:, start:start + count] = 0
            continue
        (grads,) = torch.autograd.grad(out, leaf, cotangent, allow_unused=True)
        if grads is None:
            s_all[:, start:start + count] = 0
            continue
        dots = (grads.reshape(count, b, d) * x.reshape(1, b, d)).sum(-1)  # (count, B)
        s_all[:, start:start + count] = dots.T.detach()
    return u_all, s_all


def gradient_representation_check(model: nn.Module, x: torch.Tensor,
                                  layers: Iterable[str] | None = None, *, tol: float = 1e-5,
                                  method: str = "auto", chunk_elements: int = 1 << 22
                                  ) -> RepresentationCheck:
    """Check ``u(x) = <x, grad_x u(x)>`` for every unit ``u`` of the chosen layers on inputs ``x``.

    The identity is Euler's for positively 1-homogeneous functions (``u(t x) = t u(x)``, t > 0):
    bias-free linear and convolution layers, ReLU and max-pool keep it by induction on depth; a
    bias or a GELU breaks it. Per layer, the maximum over samples ``b`` and units ``k`` of
    ``|u_k(x_b) - <x_b, grad u_k(x_b)>| / (|u_k(x_b)| + tiny)`` (see :class:`LayerCheck`) is
    compared with ``tol``. Through bias-free linear layers, ReLU and max-pool the jvp tangent
    follows the same arithmetic as the value (on the CPU they agree bit for bit); the vjp
    gradients carry their own rounding (up to 3e-11 in float64 on a bias-free LeNet; float32
    rounding can exceed the default ``tol``, so check in float64).

    ``layers``: module paths (``named_modules()`` names); default: every leaf module that runs and
    returns one tensor. ``method``: ``"jvp"``, one forward-mode pass giving ``J_u(x) x`` for every
    unit at once; ``"vjp"``, every unit's full input gradient by reverse mode in chunks (see
    :func:`_vjp_layer`; about one forward and backward of all units times the batch: 28 s for
    LeNet's 15k units on 8 images on 2 CPU cores, against 0.1 s for jvp); ``"auto"`` (default):
    jvp, or vjp where a layer has no forward-mode rule.
    Both assume samples do not interact (eval mode). ``x`` is not modified; the model's state and
    hooks are as before, also on errors.
    """
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2 or x.numel() == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InvalidInputError(f"x must be a non-empty floating batch (B, ...), got {shape}")
    check_model_input(model, x, name="x")
    if not bool(torch.isfinite(x).all()):
        raise InvalidInputError("x contains NaN or inf")
    tol = _finite(tol, "tol", positive=True)
    if method not in ("auto", "jvp", "vjp"):
        raise InvalidInputError(f"method must be one of auto, jvp, vjp, got {method!r}")
    if isinstance(chunk_elements, bool) or not isinstance(chunk_elements, int) or chunk_elements < 1:
        raise InvalidInputError(f"chunk_elements must be an int >= 1, got {chunk_elements!r}")
    modules = dict(model.named_modules())
    explicit = layers is not None
    if explicit:
        if isinstance(layers, str):
            layers = [layers]
        paths = list(dict.fromkeys(layers))
        if not paths:
            raise InvalidInputError("layers is empty; give module paths or None for every leaf module")
        for p in paths:
            find_module(model, p, "layers")
    else:
        paths = [p for p, m in modules.items() if p and not any(True for _ in m.children())]
        if not paths:
            paths = [""]  # a model that is one leaf module
    warn_if_training(model, _TRAINING_EFFECT)
    x = x.detach().clone()
    b = x.shape[0]
    with model_lock(model), preserved_state(model):
        used = method
        results: dict[str, tuple[torch.Tensor, torch.Tensor] | None] | None = None
        if method in ("auto", "jvp"):
            try:
                results = _jvp_outputs(model, x, paths)
            except NotImplementedError:  # an op or custom Function without forward-mode AD
                if method == "jvp":
                    raise InvalidInputError(f"{type(model).__name__} has an operation without "
                                            "forward-mode AD; use method='vjp'") from None
                results, used = None, "vjp"
        shapes: dict[str, tuple[int, ...] | None] = {}
        if results is None:
            shapes = module_output_shapes(model, x)  # which layers run and return a tensor
            results = {p: None if shapes[p] is None else
                       _vjp_layer(model, modules[p], x, p, chunk_elements)
                       for p in paths if p in shapes}
    checks, skipped = [], []
    for p in paths:
        entry = results.get(p)
        if entry is None:
            if explicit:
                why = "does not run in the forward" if p not in results else \
                    "does not return one float tensor"
                raise InvalidInputError(f"layers: module {p!r} {why}; give modules whose output "
                                        "is one float tensor")
            if p in results:
                skipped.append(p)
            continue
        u, s = entry
        shape = shapes.get(p) or tuple(u.shape[1:])
        rel, err, _ = _layer_errors(u.reshape(b, -1), s.reshape(b, -1))
        checks.append(_summarise(p, shape, rel, err, tol))
    return RepresentationCheck(tuple(checks), tol, used, str(x.dtype).replace("torch.", ""), b,
                               tuple(skipped))
