"""Surrogate gates: exact forward, soft backward (Satkiewicz 2025, "Pulling Back the Curtain on ReLU
Networks", arXiv 2507.22832).

A ReLU unit ``y = relu(z) = z * 1[z > 0]`` keeps its forward value; only its backward gate changes:

    dL/dz = dL/dy * gate(z / tau)      instead of      dL/dz = dL/dy * 1[z > 0]

with ``gate = sigmoid`` (the paper, tau = 0.3) or ``gate = Phi`` (the normal CDF; Phi(z / tau) is the
expected hard gate under Gaussian noise of std tau on z). tau -> 0 recovers the hard gate,
tau -> inf gives 1/2 everywhere.

A max pool keeps its exact forward ``y = max_k x_k`` over each window; its backward goes through the
soft pool ``s = sum_k w_k x_k`` with ``w = softmax(x_window / tau)``:

    ds/dx_k = w_k * (1 + (x_k - s) / tau)      (gradient through the weights, the paper's default)
    ds/dx_k = w_k                              (weights detached, ``detach_weights=True``)

The same soft pool serves every other max-type pool: an adaptive max pool (its windows, possibly
overlapping and of unequal size), and a max over one axis (``y = max_k x_k`` along ``dim``, e.g. the
max over poses of a semantic-feature layer, :class:`ExcitationGates`).

All are ``torch.autograd.Function``\\ s that save only their input and recompute the gate in
backward (the ReLU's in one fused pass), so a pullback keeps one extra activation per ReLU call
site alive and nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from pellucid._registry import Registry
from pellucid.errors import InvalidInputError

__all__ = ["GATES", "ExcitationAdaptiveMaxPool2d", "ExcitationBatchNormReLU", "ExcitationGates",
           "ExcitationMaxPool2d", "ExcitationReLU", "Gate", "PoolGeometry", "check_temperature",
           "normal_cdf_gate", "resolve_gate", "sigmoid_gate", "soft_max_pool2d_vjp", "soft_max_vjp"]

# Softplus' derivative is the sigmoid: d/dz softplus_beta(z) = sigmoid(beta z); aten's fused
# softplus_backward(grad, z, beta, threshold) = grad * sigmoid(beta z) (exactly grad above the
# threshold, where sigmoid(beta z) rounds to 1 in float64) in one pass over memory.
_SOFTPLUS_THRESHOLD = 40.0


@dataclass(frozen=True)
class Gate:
    """A backward gate ``gate(u)``, ``u = z / tau``, and optionally a fused ``grad * gate(z / tau)``."""

    name: str
    gate: Callable[[torch.Tensor], torch.Tensor]
    fused_vjp: Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor] | None = None

    def vjp(self, z: torch.Tensor, tau: float, grad: torch.Tensor) -> torch.Tensor:
        """``dL/dz = dL/dy * gate(z / tau)``."""
        if self.fused_vjp is not None:
            return self.fused_vjp(z, tau, grad)
        return self.gate(torch.div(z, tau)) * grad


def _sigmoid_vjp(z: torch.Tensor, tau: float, grad: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.softplus_backward(grad, z, 1.0 / tau, _SOFTPLUS_THRESHOLD)


GATES: Registry[Gate] = Registry("gate")
sigmoid_gate = GATES.register("sigmoid", "sigmoid(z / tau): the paper's gate (Zennit's BetaSmooth, "
                              "beta = 1/tau)")(Gate("sigmoid", torch.sigmoid, _sigmoid_vjp))
normal_cdf_gate = GATES.register("normal_cdf", "Phi(z / tau): the expected hard gate under N(0, tau^2) "
                                 "noise on z")(Gate("normal_cdf", torch.special.ndtr))


def resolve_gate(gate: "str | Gate | Callable[[torch.Tensor], torch.Tensor]") -> Gate:
    """A gate by registered name, a :class:`Gate`, or a callable ``u -> gate(u)`` (``u = z / tau``)."""
    if isinstance(gate, Gate):
        return gate
    if callable(gate):
        return Gate(getattr(gate, "__name__", "custom"), gate)
    return GATES.get(gate)


def check_temperature(temperature: float) -> float:
    try:
        tau = float(temperature)
    except (TypeError, ValueError):
        tau = float("nan")
    if not math.isfinite(tau) or tau <= 0:
        raise InvalidInputError(f"temperature must be a positive finite number, got {temperature!r} "
                                "(the paper uses 0.3; smaller is closer to the plain gradient)")
    return tau


# ----------------------------------------------------------------------------------------------
# ReLU
# ----------------------------------------------------------------------------------------------

class _ExcitationReLUFunction(torch.autograd.Function):
    """Forward ``relu(z)`` (bit-identical); backward ``grad_y * gate(z / tau)``. Saves only ``z``."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, gate: Gate, tau: float) -> torch.Tensor:
        ctx.gate, ctx.tau = gate, tau
        ctx.save_for_backward(z)
        return torch.relu(z)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        (z,) = ctx.saved_tensors
        return ctx.gate.vjp(z, ctx.tau, grad_y), None, None


class ExcitationReLU(nn.Module):
    """``y = relu(z)``; ``dL/dz = dL/dy * gate(z / tau)`` (one module may serve every call site)."""

    def __init__(self, gate: "str | Gate | Callable" = "sigmoid", temperature: float = 0.3) -> None:
        super().__init__()
        self.gate = resolve_gate(gate)
        self.temperature = check_temperature(temperature)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return _ExcitationReLUFunction.apply(z, self.gate, self.temperature)

    def extra_repr(self) -> str:
        return f"gate={self.gate.name}, temperature={self.temperature:g}"


class _ExcitationBatchNormReLUFunction(torch.autograd.Function):
    """``y = relu(z)``, ``z = BN(c) = (c - mu) / sqrt(var + eps) * gamma + beta`` (eval mode).

    Saves only ``c`` (which plain autograd saves for the batch norm anyway) and recomputes ``z`` in
    backward: ``dL/dc = dL/dy * gate(z / tau) * gamma / sqrt(var + eps)``, so a conv-BN-ReLU site
    costs the pullback no memory beyond the plain gradient's. Batch-norm parameters get no gradient.
    """

    @staticmethod
    def forward(ctx, c: torch.Tensor, bn: nn.BatchNorm2d, gate: Gate, tau: float) -> torch.Tensor:
        ctx.bn, ctx.gate, ctx.tau = bn, gate, tau
        ctx.save_for_backward(c)
        return torch.relu_(_eval_batch_norm(c, bn))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        (c,) = ctx.saved_tensors
        bn = ctx.bn
        z = _eval_batch_norm(c, bn)
        grad = ctx.gate.vjp(z, ctx.tau, grad_y)
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shape = (1, -1) + (1,) * (c.dim() - 2)  # per channel: (1, C, 1, 1)
        return grad.mul_(scale.to(grad.dtype).view(shape)), None, None, None


def _eval_batch_norm(c: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    return F.batch_norm(c, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


class ExcitationBatchNormReLU(nn.Module):
    """``relu(bn(c))`` with the excitation gate, fused so that only ``c`` is saved (eval-mode BN).

    Falls back to ``bn`` + :class:`ExcitationReLU` whenever ``bn`` is in training mode or keeps no
    running statistics (then its output depends on the batch and must be differentiated as such).
    """

    def __init__(self, bn: nn.BatchNorm2d, relu: ExcitationReLU) -> None:
        super().__init__()
        self.bn, self.relu = bn, relu

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        if bn.training or bn.running_mean is None or bn.running_var is None:
            return self.relu(bn(c))
        return _ExcitationBatchNormReLUFunction.apply(c, bn, self.relu.gate, self.relu.temperature)


# ----------------------------------------------------------------------------------------------
# MaxPool2d
# ----------------------------------------------------------------------------------------------

def _pair(v) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[-1])) if len(v) else (0, 0)
    return (int(v), int(v))


@dataclass(frozen=True)
class PoolGeometry:
    """The arguments of ``F.max_pool2d`` (stride ``None``/empty means stride = kernel)."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False

    @classmethod
    def of(cls, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False) -> "PoolGeometry":
        kernel = _pair(kernel_size)
        empty = stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0)
        return cls(kernel, kernel if empty else _pair(stride), _pair(padding), _pair(dilation),
                   bool(ceil_mode))


def soft_max_pool2d_vjp(x: torch.Tensor, grad_out: torch.Tensor, geometry: PoolGeometry, tau: float,
                        detach_weights: bool) -> torch.Tensor:
    """``grad_x = (d s / dx)^T grad_out`` for the soft pool ``s`` over the hard pool's windows.

    ``w_k = softmax_k(x_k / tau)``, ``s = sum_k w_k x_k``; ``ds/dx_k = w_k (1 + (x_k - s) / tau)``,
    or ``w_k`` with the weights detached. ``g w_k (x_k - s)`` is the softmax backward of the
    upstream ``g x_k`` (one fused aten op). Windows are cut with ``F.unfold`` from the input padded
    with a value whose weight underflows to exactly 0, and summed back with ``F.fold``.
    """
    g = geometry
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g.kernel_size, g.stride, g.padding, g.dilation
    batch, channels, height, width = x.shape
    out_h, out_w = grad_out.shape[-2:]
    # rows/cols the windows reach; ceil_mode may reach beyond the symmetric padding
    right_h = max((out_h - 1) * sh + dh * (kh - 1) + 1 - height - ph, 0)
    right_w = max((out_w - 1) * sw + dw * (kw - 1) + 1 - width - pw, 0)
    padded = x
    if ph or pw or right_h or right_w:
        pad_value = float(x.min()) - 1e4 * tau  # exp((pad - max) / tau) <= exp(-1e4) == 0
        padded = F.pad(x, (pw, right_w, ph, right_h), value=pad_value)
    cols = F.unfold(padded, (kh, kw), (dh, dw), 0, (sh, sw))  # (B, C*kh*kw, L)
    cols = cols.view(batch, channels, kh * kw, out_h * out_w)  # (B, C, K, L)
    weights = torch.softmax(cols / tau, dim=2)  # w_k
    grad = grad_out.reshape(batch, channels, 1, out_h * out_w)  # (B, C, 1, L)
    if detach_weights:
        grad_cols = weights.mul_(grad)  # g w_k
    else:  # g w_k + g w_k (x_k - s) / tau
        grad_cols = torch.ops.aten._softmax_backward_data(cols.mul_(grad), weights, 2, weights.dtype)
        grad_cols.div_(tau).addcmul_(weights, grad)
    grad_cols = grad_cols.view(batch, channels * kh * kw, out_h * out_w)
    grad_padded = F.fold(grad_cols, padded.shape[-2:], (kh, kw), (dh, dw), 0, (sh, sw))
    return grad_padded[..., ph:ph + height, pw:pw + width]


class _ExcitationMaxPoolFunction(torch.autograd.Function):
    """Forward: the exact ``F.max_pool2d``; backward: the soft pool's vector-Jacobian product."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, geometry: PoolGeometry, tau: float, detach_weights: bool):
        ctx.geometry, ctx.tau, ctx.detach_weights = geometry, tau, detach_weights
        ctx.save_for_backward(x)
        g = geometry
        return F.max_pool2d(x, g.kernel_size, g.stride, g.padding, g.dilation, g.ceil_mode)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        (x,) = ctx.saved_tensors
        return soft_max_pool2d_vjp(x, grad_y, ctx.geometry, ctx.tau, ctx.detach_weights), None, None, None


class ExcitationMaxPool2d(nn.Module):
    """Exact max pool forward; backward through ``sum_k softmax_k(x / tau) x_k`` over each window."""

    def __init__(self, geometry: PoolGeometry, temperature: float = 0.3,
                 detach_weights: bool = False) -> None:
        super().__init__()
        self.geometry = geometry
        self.temperature = check_temperature(temperature)
        self.detach_weights = bool(detach_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ExcitationMaxPoolFunction.apply(x, self.geometry, self.temperature, self.detach_weights)

    def extra_repr(self) -> str:
        g = self.geometry
        return (f"kernel_size={g.kernel_size}, stride={g.stride}, padding={g.padding}, "
                f"dilation={g.dilation}, ceil_mode={g.ceil_mode}, temperature={self.temperature:g}, "
                f"detach_weights={self.detach_weights}")


# ----------------------------------------------------------------------------------------------
# Max along one axis, adaptive max pools, and the gates handed to self-rewriting layers
# ----------------------------------------------------------------------------------------------

def soft_max_vjp(x: torch.Tensor, grad: torch.Tensor, dim: int, tau: float,
                 detach_weights: bool) -> torch.Tensor:
    """``grad_x`` of the soft max ``s = sum_k w_k x_k``, ``w = softmax(x / tau)`` along ``dim``.

    ``grad`` broadcasts against ``x`` (size 1 along ``dim``). ``ds/dx_k = w_k (1 + (x_k - s) / tau)``,
    or ``w_k`` with the weights detached; ``g w_k (x_k - s)`` is the softmax backward of ``g x_k``.
    """
    weights = torch.softmax(x / tau, dim=dim)
    if detach_weights:
        return weights * grad
    out = torch.ops.aten._softmax_backward_data(x * grad, weights, dim, weights.dtype)
    return out.div_(tau).addcmul_(weights, grad)


class _ExcitationMaxFunction(torch.autograd.Function):
    """Forward ``x.amax(dim)`` (the exact max); backward :func:`soft_max_vjp`. Saves only ``x``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, keepdim: bool, tau: float, detach_weights: bool):
        ctx.dim, ctx.keepdim, ctx.tau, ctx.detach_weights = dim, keepdim, tau, detach_weights
        ctx.save_for_backward(x)
        return x.amax(dim, keepdim=keepdim)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        (x,) = ctx.saved_tensors
        grad = grad_y if ctx.keepdim else grad_y.unsqueeze(ctx.dim)
        return soft_max_vjp(x, grad, ctx.dim, ctx.tau, ctx.detach_weights), None, None, None, None


@dataclass(frozen=True)
class ExcitationGates:
    """The surrogate gates a layer with its own excitation sites calls at each one.

    ``relu(z)``: ``relu(z)`` with backward ``gate(z / tau)``. ``max(x, dim)``: the exact
    ``max_k x_k`` along ``dim`` with backward through ``sum_k softmax_k(x / tau) x_k``, or the hard
    max (``torch.max``: the gradient goes to the first maximiser) when ``soften_max`` is false.
    See :mod:`pellucid.explain.rewrite` for the protocol.
    """

    gate: Gate
    temperature: float
    detach_pool_weights: bool = False
    soften_max: bool = True

    def relu(self, z: torch.Tensor) -> torch.Tensor:
        return _ExcitationReLUFunction.apply(z, self.gate, self.temperature)

    def max(self, x: torch.Tensor, dim: int, keepdim: bool = False) -> torch.Tensor:
        if not self.soften_max:
            return x.max(dim, keepdim=keepdim).values
        return _ExcitationMaxFunction.apply(x, dim % x.dim(), keepdim, self.temperature,
                                            self.detach_pool_weights)


def _adaptive_windows(size: int, out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive pooling's windows ``[floor(i size / out), ceil((i + 1) size / out))`` as indices
    ``(out, k)`` (clamped into range) and their validity mask (windows differ in length by <= 1)."""
    i = torch.arange(out, device=device)
    start = torch.div(i * size, out, rounding_mode="floor")
    end = torch.div((i + 1) * size + out - 1, out, rounding_mode="floor")
    idx = start[:, None] + torch.arange(int((end - start).max()), device=device)
    return idx.clamp(max=size - 1), idx < end[:, None]


def soft_adaptive_max_pool2d_vjp(x: torch.Tensor, grad_out: torch.Tensor, tau: float,
                                 detach_weights: bool) -> torch.Tensor:
    """``grad_x`` of the soft pool over the windows of ``F.adaptive_max_pool2d`` (``x`` ``(B, C, H, W)``).

    Each output cell's window is gathered as ``K`` flat pixel indices (short windows padded with a
    value whose weight underflows to 0), :func:`soft_max_vjp` runs over them, and the window
    gradients are summed back with ``index_add_`` (windows may overlap).
    """
    batch, channels, height, width = x.shape
    out_h, out_w = grad_out.shape[-2:]
    rows, row_ok = _adaptive_windows(height, out_h, x.device)  # (oh, kh)
    cols, col_ok = _adaptive_windows(width, out_w, x.device)  # (ow, kw)
    index = (rows[:, None, :, None] * width + cols[None, :, None, :]).reshape(out_h * out_w, -1)  # (L, K)
    valid = (row_ok[:, None, :, None] & col_ok[None, :, None, :]).reshape(out_h * out_w, -1)
    flat = x.reshape(batch, channels, height * width)
    windows = flat[:, :, index]  # (B, C, L, K)
    if not bool(valid.all()):
        windows = windows.masked_fill(~valid, float(x.min()) - 1e4 * tau)  # weight exp(-1e4) == 0
    grad = grad_out.reshape(batch, channels, out_h * out_w, 1)
    grad_windows = soft_max_vjp(windows, grad, -1, tau, detach_weights)  # (B, C, L, K)
    grad_x = torch.zeros_like(flat).index_add_(2, index.reshape(-1), grad_windows.flatten(2))
    return grad_x.view_as(x)


class _ExcitationAdaptiveMaxPoolFunction(torch.autograd.Function):
    """Forward: the exact ``F.adaptive_max_pool2d``; backward: the soft pool over its windows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, output_size, tau: float, detach_weights: bool):
        ctx.tau, ctx.detach_weights = tau, detach_weights
        ctx.save_for_backward(x)
        return F.adaptive_max_pool2d(x, output_size)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        (x,) = ctx.saved_tensors
        batched = x.dim() == 4  # (C, H, W) inputs are one unbatched image
        x4, g4 = (x, grad_y) if batched else (x.unsqueeze(0), grad_y.unsqueeze(0))
        grad = soft_adaptive_max_pool2d_vjp(x4, g4, ctx.tau, ctx.detach_weights)
        return (grad if batched else grad.squeeze(0)), None, None, None


class ExcitationAdaptiveMaxPool2d(nn.Module):
    """Exact adaptive max pool forward; backward through ``sum_k softmax_k(x / tau) x_k`` per window."""

    def __init__(self, output_size, temperature: float = 0.3, detach_weights: bool = False) -> None:
        super().__init__()
        self.output_size = output_size
        self.temperature = check_temperature(temperature)
        self.detach_weights = bool(detach_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ExcitationAdaptiveMaxPoolFunction.apply(x, self.output_size, self.temperature,
                                                        self.detach_weights)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, temperature={self.temperature:g}, "
                f"detach_weights={self.detach_weights}")
