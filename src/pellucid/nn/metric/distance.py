"""Metric neurons: a neuron's output is a distance to its centre instead of a dot product.

"Metric as Transform" (Sapkota): for an input ``x in R^D`` and centres ``c_j`` (``H`` of them),
``d_j = ||x - c_j||_p``. A bare distance does not train well; it must be normalised (the paper's
MLP puts BatchNorm and LayerNorm after it, and the standardised variant below also standardises
across the ``H`` centres of each sample).

Layers (all map ``(B, D) -> (B, H)``):

* :class:`LpDistance`        ``y = -(d - mean_j d) / std_j d``  ("standardised", default) or
                             ``y = (1 - d) exp(s)``  ("simple"); any ``p > 0``.
* :class:`StereoAngle`       inverse stereographic projection onto ``S^D``, then unit-row linear.
* :class:`CosineSimilarity`  ``cos angle(x, c_j)``.
* :class:`ConvexDistance`    ``y = -f(x - c_j) exp(t)``, ``f`` a one-hidden-layer input-convex network.
* :class:`InputConvexDistance` the same with ``f`` a deep input-convex network (the author's notebook's).
* :class:`InvexDistance` (in :mod:`pellucid.nn.metric.invex`) learnable invex / "ordinary" distance.

Convolutional forms (:mod:`pellucid.nn.metric.conv`) apply any of them to image patches.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from pellucid.errors import InvalidInputError

__all__ = ["ConvexDistance", "CosineSimilarity", "InputConvexDistance", "LpDistance", "StereoAngle", "check_features",
           "euclidean_distance", "inverse_stereographic", "lp_distance", "standardise_negated"]


def check_features(x: torch.Tensor, in_features: int, name: str = "input") -> None:
    """Raise :class:`InvalidInputError` unless ``x`` is a finite float ``(B, in_features)`` batch."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InvalidInputError(f"{name} must be a floating-point torch.Tensor")
    if x.dim() != 2 or x.shape[1] != in_features:
        raise InvalidInputError(f"{name} must have shape (B, {in_features}), got {tuple(x.shape)}; "
                                "flatten images with x.flatten(1)")
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(x).all()):
        raise InvalidInputError(f"{name} contains NaN or inf")


# torch.fx records this input check as one call (it reads tensor values, which a trace cannot),
# so traced copies (e.g. for excitation pullbacks) still check every input.
torch.fx.wrap("check_features")


def lp_distance(x: torch.Tensor, centres: torch.Tensor, p: float, compiled: bool = False) -> torch.Tensor:
    r"""``d[b, j] = (\sum_i |x_{bi} - c_{ji}|^p)^{1/p}`` for any ``p > 0`` (``(B, D), (H, D) -> (B, H)``).

    For ``p < 1`` this is not a norm (no triangle inequality) but still a usable dissimilarity.
    ``p = 2`` goes through :func:`euclidean_distance` (``torch.cdist``'s matrix-multiply path,
    accurate near zero) and ``p = 1`` through ``torch.cdist``'s own kernel; every other ``p``
    through :class:`_GeneralLpDistance`, which is 4-10x faster than ``torch.cdist``'s generic-``p``
    kernel (``benchmarks/metric_lp_speed.py``).

    ``compiled=True`` (every ``p`` but 2) runs the same math as ``torch.compile``-generated loops
    that never hold a ``(B, H, D)`` tensor of differences; it needs a working C++ compiler, costs
    tens of seconds of compilation per ``p`` and input shape, and agrees with the eager path to
    float rounding (a different summation order).
    """
    if not p > 0:
        raise InvalidInputError(f"p must be > 0, got {p}")
    if p == 2:
        return euclidean_distance(x, centres)
    if compiled:
        return _GeneralLpDistance.apply(x, centres, float(p), True)
    if p == 1:
        return torch.cdist(x, centres, p=1.0)
    return _GeneralLpDistance.apply(x, centres, float(p), False)


# Pairs with d^2 <= _NEAR_PAIR * (max |x|^2 + max |c|^2) are recomputed from the difference. The matrix-
# multiply form's rounding error is about D * eps * (|x|^2 + |c|^2) (~5e-5 relative at D = 784 in
# float32), so 1e-3 leaves a wide margin; a pair recomputed needlessly costs only time.
_NEAR_PAIR = 1e-3


def euclidean_distance(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    r"""``d[b, j] = ||x_b - c_j||_2`` (``(B, D), (H, D) -> (B, H)``), accurate near zero.

    The bulk goes through ``torch.cdist``'s matrix-multiply form
    ``d^2 = |x|^2 + |c|^2 - 2 x . c``, which cancels catastrophically when ``d << |x|``: an input
    equal to a centre lands at ``sqrt(rounding)`` (about 1e-2 for 784 float32 features, and its
    value depends on the CPU's BLAS kernel) instead of 0. The few near pairs are recomputed as
    ``||x_b - c_j||`` and scattered back (gradients flow through both paths).
    """
    d = torch.cdist(x, centres, p=2.0, compute_mode="use_mm_for_euclid_dist")
    with torch.no_grad():  # one bound for the batch: max norms (a few extra pairs only cost time)
        scale = x.square().sum(1).max() + centres.square().sum(1).max()
        rows, cols = (d <= (_NEAR_PAIR * scale).sqrt()).nonzero(as_tuple=True)
    if rows.numel() == 0:
        return d
    return d.index_put((rows, cols), torch.linalg.vector_norm(x[rows] - centres[cols], dim=1))


# One call in traced copies (its near-pair refinement reads tensor values, which a trace cannot).
torch.fx.wrap("euclidean_distance")


# Elements of one (B, h, D) block of differences: ~1 MiB of float32 stays in cache through the
# half-dozen elementwise passes, where the whole (B, H, D) tensor (78 MB at B=50, H=500, D=784)
# would go to memory on each pass. Measured best among 2..16 centres per block at B=50, D=784.
_LP_BLOCK_ELEMENTS = 1 << 18


def _abs_pow(a: torch.Tensor, q: float, inplace: bool = True) -> torch.Tensor:
    """``a^q`` for ``a >= 0``; ``inplace`` overwrites ``a`` where it can (eager code).

    Square roots and small integer powers (square-and-multiply) are several times cheaper than
    the generic ``pow``, and p = 0.5 and p = 20 are the two Table 1 rows that need this path.
    Traced (compiled) code passes ``inplace=False``; Inductor turns integer powers into products.
    """
    if q == 1:
        return a
    if q == 0.5:
        return a.sqrt_() if inplace else a.sqrt()
    if q == -0.5:
        return a.rsqrt_() if inplace else a.rsqrt()
    if not inplace:
        return a.pow(int(q) if float(q).is_integer() else q)
    if float(q).is_integer() and 2 <= q <= 64:
        n, result, base = int(q), None, a
        while n:
            if n & 1:
                result = base.clone() if result is None else result.mul_(base)
            n >>= 1
            if n:
                base = base * base if base is result else base.mul_(base)
        return result
    return a.pow_(q)


def _lp_slope(r: torch.Tensor, q: float, inplace: bool) -> torch.Tensor:
    """``sign(r) |r|^q`` with 0 where ``r = 0`` (``q = p - 1``; ``torch.cdist``'s convention)."""
    if float(q).is_integer() and q % 2 == 1:
        return _abs_pow(r, q, inplace) if q > 1 else r  # an odd power keeps the sign
    slope = _abs_pow(r.abs(), q, inplace)
    slope = slope.mul_(r.sign()) if inplace else slope * r.sign()
    return torch.where(r == 0, 0.0, slope) if q < 0 else slope  # sign 0 times |0|^q = inf


@functools.lru_cache(maxsize=None)
def _compiled_lp_kernels(p: float):
    """``torch.compile``d power sum and gradient sums for one ``p`` (fused: no ``(B, H, D)`` buffer)."""

    def power_sum(x, centres):
        return _abs_pow((x[:, None, :] - centres[None]).abs(), p, inplace=False).sum(-1)

    def gradient_sums(x, centres, inv_d, grad_d):
        r = (x[:, None, :] - centres[None]) * inv_d[:, :, None]
        weighted = grad_d[:, :, None] * _lp_slope(r, p - 1, inplace=False)
        return weighted.sum(1), -weighted.sum(0)

    return torch.compile(power_sum, fullgraph=True), torch.compile(gradient_sums, fullgraph=True)


def _run_compiled(kernel, *args):
    try:
        return kernel(*args)
    except Exception as e:  # Inductor wraps compiler failures in several exception types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidInputError(f"compiled kernels need torch.compile with a working C++ "
                                f"compiler; it failed: {first[:200]}") from e


class _GeneralLpDistance(torch.autograd.Function):
    r"""``d = (\sum_i |x_i - c_i|^p)^{1/p}`` in blocks of centres, recomputing differences in backward.

    Backward: ``\partial d / \partial x_i = \mathrm{sign}(r_i) |r_i|^{p-1}`` with ``r = (x - c) / d``
    (the scaled form cannot overflow for large ``p``), and ``\partial d / \partial c = -\partial d / \partial x``.
    Where ``x_i = c_i`` and ``p < 1`` the derivative is infinite; like ``torch.cdist`` we use 0
    there, and 0 for the whole pair where ``d = 0``. Nothing of size ``(B, H, D)`` is stored.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, centres: torch.Tensor, p: float, compiled: bool) -> torch.Tensor:
        block = max(1, _LP_BLOCK_ELEMENTS // max(1, x.shape[0] * x.shape[1]))
        if compiled:
            total = _run_compiled(_compiled_lp_kernels(p)[0], x, centres)
        else:
            total = x.new_empty(x.shape[0], centres.shape[0])
            for start in range(0, centres.shape[0], block):
                diff = x[:, None, :] - centres[None, start:start + block]  # (B, h, D)
                total[:, start:start + block] = _abs_pow(diff.abs_(), p).sum(-1)
        d = total.pow_(1.0 / p)
        ctx.save_for_backward(x, centres, d)
        ctx.p, ctx.block, ctx.compiled = p, block, compiled
        return d

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_d: torch.Tensor):
        x, centres, d = ctx.saved_tensors
        p, block = ctx.p, ctx.block
        inv_d = torch.where(d > 0, d.reciprocal(), torch.zeros_like(d))
        if ctx.compiled:
            grad_x, grad_c = _run_compiled(_compiled_lp_kernels(p)[1], x, centres, inv_d, grad_d)
            return (grad_x if ctx.needs_input_grad[0] else None,
                    grad_c if ctx.needs_input_grad[1] else None, None, None)
        grad_x = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        grad_c = torch.empty_like(centres) if ctx.needs_input_grad[1] else None
        for start in range(0, centres.shape[0], block):
            stop = start + block
            r = (x[:, None, :] - centres[None, start:stop]).mul_(inv_d[:, start:stop, None])  # (B, h, D)
            slope = _lp_slope(r, p - 1, inplace=True)
            g = grad_d[:, start:stop]
            if grad_x is not None:  # sum_j g_bj slope_bji, as (B, 1, h) @ (B, h, D)
                grad_x += torch.bmm(g[:, None, :], slope).squeeze(1)
            if grad_c is not None:  # -sum_b g_bj slope_bji, as (h, 1, B) @ (h, B, D)
                grad_c[start:stop] = torch.bmm(g.t()[:, None, :], slope.transpose(0, 1)).squeeze(1).neg_()
        return grad_x, grad_c, None, None


def standardise_negated(d: torch.Tensor, dim: int = 1, eps: float = 1e-5) -> torch.Tensor:
    """``y = -(d - mean d) / (std d + eps)`` with mean and (unbiased) std over ``dim`` (the centres)."""
    return -(d - d.mean(dim, keepdim=True)) / (d.std(dim, keepdim=True) + eps)


class LpDistance(nn.Module):
    r"""Metric neurons ``d_j = ||x - c_j||_p`` with a normalisation across the ``H`` centres.

    ``variant="standardised"`` (default; it produced the paper's Table 1):
    ``y_j = -(d_j - mean_k d_k) / std_k d_k``; ``variant="simple"``: ``y_j = (1 - d_j) e^{s}`` with a
    learnable scalar ``s`` (init 0). Centres are initialised ``randn / 3``; :meth:`distances` gives
    the raw ``d``. ``compiled`` (an execution option, not saved with the weights) selects
    :func:`lp_distance`'s ``torch.compile`` path.
    """

    def __init__(self, in_features: int, out_features: int, p: float = 2.0,
                 variant: str = "standardised", compiled: bool = False) -> None:
        super().__init__()
        if not p > 0:
            raise InvalidInputError(f"p must be > 0, got {p}")
        if variant not in ("standardised", "simple"):
            raise InvalidInputError(f"variant must be 'standardised' or 'simple', got {variant!r}")
        if variant == "standardised" and out_features < 2:
            raise InvalidInputError("the standardised variant needs out_features >= 2 (a std over "
                                    "one centre is undefined); use variant='simple'")
        self.in_features, self.out_features, self.p, self.variant = in_features, out_features, p, variant
        self.compiled = compiled
        self.centres = nn.Parameter(torch.randn(out_features, in_features) / 3)  # (H, D)
        if variant == "simple":
            self.log_scale = nn.Parameter(torch.zeros(()))

    def distances(self, x: torch.Tensor) -> torch.Tensor:
        check_features(x, self.in_features)
        return lp_distance(x, self.centres, self.p, compiled=self.compiled)  # (B, H)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.distances(x)
        if self.variant == "standardised":
            return standardise_negated(d)
        return (1 - d) * self.log_scale.exp()

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, p={self.p:g}, variant={self.variant}"


def inverse_stereographic(x: torch.Tensor) -> torch.Tensor:
    r"""``z = [2x / (|x|^2 + 1), (|x|^2 - 1) / (|x|^2 + 1)]``: ``R^D -> S^D`` (``(B, D) -> (B, D+1)``).

    Its inverse is :func:`pellucid.nn.metric.inversion.stereographic` ``x = z[:D] / (1 - z[D])``.
    """
    sq = x.pow(2).sum(1, keepdim=True)
    return torch.cat([2 * x / (sq + 1), (sq - 1) / (sq + 1)], dim=1)


class StereoAngle(nn.Module):
    r"""Stereographic metric neurons: ``x' = x e^{t}``, ``z = S^{-1}(x')`` on the sphere ``S^D``,
    ``y_j = \hat w_j \cdot z + b_j`` with unit rows ``\hat w_j = w_j / ||w_j||``.

    ``y_j - b_j`` is the cosine of the angle on the sphere between ``z`` and the centre ``\hat w_j``
    (a monotone function of the Euclidean distance between them). ``t`` is learnable, init
    ``log(1 / sqrt(D))`` so that typical inputs land away from the pole.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.log_input_scale = nn.Parameter(torch.tensor(math.log(1 / math.sqrt(in_features))))
        self.weight = nn.Parameter(torch.randn(out_features, in_features + 1) / math.sqrt(in_features + 1))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def unit_weight(self) -> torch.Tensor:
        return F.normalize(self.weight, dim=1)  # (H, D+1)

    def sphere(self, x: torch.Tensor) -> torch.Tensor:
        check_features(x, self.in_features)
        return inverse_stereographic(x * self.log_input_scale.exp())  # (B, D+1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.sphere(x), self.unit_weight(), self.bias)


class CosineSimilarity(nn.Module):
    r"""``y_j = x \cdot c_j / (||x|| ||c_j||)`` (the cosine of the angle to each centre)."""

    def __init__(self, in_features: int, out_features: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.in_features, self.out_features, self.eps = in_features, out_features, eps
        self.centres = nn.Parameter(torch.randn(out_features, in_features) / 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_features(x, self.in_features)
        return F.normalize(x, dim=1, eps=self.eps) @ F.normalize(self.centres, dim=1, eps=self.eps).T

    def angles(self, x: torch.Tensor) -> torch.Tensor:
        """The angle ``arccos(y)`` in radians, ``(B, H)``."""
        return self(x).clamp(-1.0, 1.0).acos()


def _softplus_by_log(z: torch.Tensor) -> torch.Tensor:
    """``softplus(z) = max(z, 0) + log(1 + e^{-|z|})``, within one rounding of 1 (absolute) of
    ``log1p``'s value.

    Why not ``log1p``: compiled code vectorises ``log`` but calls a scalar ``log1p``, which made
    the fused hidden term 7.5x slower (60 ms against 8 ms for 12.5M values, 2 threads). And the
    exponential has one user only: Inductor stores reused exponentials on the CPU, here a
    ``(B, H, hidden)`` buffer.
    """
    return z.clamp_min(0) + torch.log(1 + torch.exp(-z.abs()))


@functools.lru_cache(maxsize=None)
def _compiled_softplus_sum_kernels():
    """``torch.compile``d ``\\sum_k a_k softplus(wx_{bk} - wc_{jk} + b_k)`` and its gradient sums,
    fused into loops over ``(B, H, hidden)`` that never hold a tensor of that size.

    The gradient sums run over the centres and over the batch in two separate kernels, each
    recomputing ``z``: compiled as one graph, the shared factor is stored as a ``(B, H, hidden)``
    buffer and read three times, which made the backward 3x slower.
    """

    def pre(wx, wc, bias):
        return wx[:, None, :] - wc[None] + bias

    def value(wx, wc, bias, outer):
        return (_softplus_by_log(pre(wx, wc, bias)) * outer).sum(-1)

    def sums_over_centres(wx, wc, bias, grad):  # (B, hidden) each
        z = pre(wx, wc, bias)
        return (grad[:, :, None] * torch.sigmoid(z)).sum(1), (grad[:, :, None] * _softplus_by_log(z)).sum(1)

    def sum_over_batch(wx, wc, bias, grad):  # (H, hidden)
        return (grad[:, :, None] * torch.sigmoid(pre(wx, wc, bias))).sum(0)

    return tuple(torch.compile(f, fullgraph=True) for f in (value, sums_over_centres, sum_over_batch))


class _CompiledSoftplusSum(torch.autograd.Function):
    r"""``s_{bj} = \sum_k a_k \mathrm{softplus}(wx_{bk} - wc_{jk} + b_k)`` by compiled loops.

    Backward, with ``z = wx_b - wc_j + b`` and ``g_{bjk} = \bar s_{bj} a_k \sigma(z_{bjk})``:
    ``\bar{wx} = \sum_j g``, ``\bar{wc} = -\sum_b g``, ``\bar b = \sum_{b,j} g`` and
    ``\bar a = \sum_{b,j} \bar s_{bj} \mathrm{softplus}(z_{bjk})``; ``z`` is recomputed, not stored.
    """

    @staticmethod
    def forward(ctx, wx, wc, bias, outer):
        ctx.save_for_backward(wx, wc, bias, outer)
        return _run_compiled(_compiled_softplus_sum_kernels()[0], wx, wc, bias, outer)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        wx, wc, bias, outer = ctx.saved_tensors
        _, over_centres, over_batch = _compiled_softplus_sum_kernels()
        grad = grad.contiguous()
        sigmoid_sum, softplus_sum = _run_compiled(over_centres, wx, wc, bias, grad)
        grad_wx = sigmoid_sum * outer
        grads = (grad_wx, -_run_compiled(over_batch, wx, wc, bias, grad) * outer if ctx.needs_input_grad[1] else None,
                 grad_wx.sum(0), softplus_sum.sum(0))
        return tuple(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad))


class ConvexDistance(nn.Module):
    r"""Learnable convex distance ``y_j = -f(x - c_j) e^{t}`` with ``f`` input-convex (Amos et al.).

    ``f(u) = \sum_k softplus(a_k) \, \mathrm{softplus}(W_k u + b_k) + v \cdot u + \tfrac12 ||u||^2 e^{q}``:
    non-negative combination of convex functions of ``u`` plus a linear skip from the input, so
    ``f`` is convex in ``u`` (and the quadratic term gives it a finite minimum). The first layer
    is affine, so ``W(x - c_j) = Wx - Wc_j``: the ``(B, H, D)`` tensor of differences is never
    formed, only ``(B, H, hidden)``.

    ``convex=False`` drops what makes ``f`` a generalised distance: the outer weights ``a_k`` may
    take any sign and the quadratic term is gone, ``f(u) = \sum_k a_k \mathrm{softplus}(W_k u + b_k)
    + v \cdot u``, an ordinary one-hidden-layer network of the difference (the paper's text blames
    the "ordinary" row's lower accuracy on its "not being a generalized form of metric").

    ``compiled=True`` (an execution option, not saved with the weights) computes the hidden term
    with ``torch.compile``-generated loops that never hold the ``(B, H, hidden)`` pre-activations
    (it needs a working C++ compiler and agrees with the eager path to float rounding: another
    summation order). ``benchmarks/metric_table1.py --cost-only`` measures both.
    """

    def __init__(self, in_features: int, out_features: int, hidden: int = 500, convex: bool = True,
                 compiled: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features, self.convex = in_features, out_features, convex
        self.compiled = compiled
        self.centres = nn.Parameter(torch.randn(out_features, in_features) / 3)
        self.inner = nn.Linear(in_features, hidden)
        self.raw_outer = nn.Parameter(torch.randn(hidden) / math.sqrt(hidden))  # a_k, softplus > 0
        self.skip = nn.Parameter(torch.zeros(in_features))  # v
        if convex:
            self.log_quadratic = nn.Parameter(torch.tensor(-2.0))  # q
        else:
            self.register_parameter("log_quadratic", None)
        self.log_scale = nn.Parameter(torch.zeros(()))  # t

    def convex_value(self, x: torch.Tensor) -> torch.Tensor:
        """``f(x - c_j)`` for every pair, ``(B, H)``."""
        check_features(x, self.in_features)
        wx, wc = F.linear(x, self.inner.weight), F.linear(self.centres, self.inner.weight)
        outer = F.softplus(self.raw_outer) if self.convex else self.raw_outer
        if self.compiled:
            hidden_term = _CompiledSoftplusSum.apply(wx, wc, self.inner.bias, outer)
        else:
            pre = wx[:, None, :] - wc[None, :, :] + self.inner.bias  # (B, H, hidden)
            hidden_term = F.softplus(pre) @ outer  # (B, H)
        linear_term = (x @ self.skip)[:, None] - (self.centres @ self.skip)[None, :]
        if not self.convex:
            return hidden_term + linear_term
        sq = lp_distance(x, self.centres, 2.0).pow(2)
        return hidden_term + linear_term + 0.5 * sq * self.log_quadratic.exp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.convex_value(x) * self.log_scale.exp()


class InputConvexDistance(nn.Module):
    r"""Learnable convex distance ``y_j = -f(x - c_j) e^{t}`` with ``f`` a deep input-convex network.

    With ``u = x - c_j``, widths ``n_1 .. n_L`` and ``\sigma`` = LeakyReLU (slope 0.01):

    ``z_1 = \sigma(W_0 u + b_0)``, ``z_{k+1} = \sigma(W_k z_k + S_k u + b_k)``,
    ``f(u) = W_L z_L + S_L u + b_L``, every ``W_k >= 0`` (``b_k`` is the sum of the layer's and the
    skip's bias).

    ``\sigma`` is convex and non-decreasing, so each ``z_k`` and ``f`` are convex in ``u`` (Amos et al.,
    "Input convex neural networks"); the skips ``S_k`` from the input may take any sign. This is the
    network of the author's Table 1 notebook (``[784, 502, 501, 1]`` for a "500-unit" network): two
    hidden layers, the skips and ``W_1 .. W_L`` initialised at a tenth of ``nn.Linear``'s scale,
    and *every* ``W_k`` kept non-negative, ``W_0`` too (not needed for convexity, but part of that
    construction). :class:`ConvexDistance` is pellucid's lighter reading (one hidden layer and a
    quadratic term).

    The constraint: the forward uses ``|W_k|``, and :meth:`project_` (which pellucid's trainer
    calls after every optimizer step) stores ``|W_k|``, so the parameters stay what the forward
    uses and an optimizer steps them as the notebook's in-place ``abs`` does. Every affine map
    of ``u`` is split, ``A(x - c_j) = Ax - Ac_j``, so only the hidden activations are ``(B, H, n_k)``.
    """

    def __init__(self, in_features: int, out_features: int, widths: tuple[int, ...] = (502, 501),
                 negative_slope: float = 0.01) -> None:
        super().__init__()
        def count(v):
            return isinstance(v, int) and not isinstance(v, bool) and v >= 1

        if not count(in_features) or not count(out_features):
            raise InvalidInputError(f"in_features and out_features must be ints >= 1, got {in_features!r}, "
                                    f"{out_features!r}")
        widths = tuple(widths) if isinstance(widths, (tuple, list)) else (widths,)
        if not widths or not all(count(w) for w in widths):
            raise InvalidInputError(f"widths must be one or more ints >= 1, got {widths!r}")
        if (not isinstance(negative_slope, (int, float)) or isinstance(negative_slope, bool)
                or not 0 <= negative_slope < 1):
            raise InvalidInputError(f"negative_slope must be in [0, 1) for a convex activation, got {negative_slope!r}")
        self.in_features, self.out_features, self.widths = in_features, out_features, widths
        self.negative_slope = negative_slope
        dims = (in_features, *widths, 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))  # W_k, b_k
        # S_k. Each skip carries a bias of its own, as the notebook's do: redundant with b_k as a
        # function, but an optimizer steps both, so the sum moves as the notebook's does.
        self.skips = nn.ModuleList(nn.Linear(in_features, b) for b in dims[2:])
        with torch.no_grad():
            for m in (*self.layers[1:], *self.skips):
                m.weight.mul_(0.1)
        self.project_()
        self.centres = nn.Parameter(torch.randn(out_features, in_features) / 3)
        self.log_scale = nn.Parameter(torch.zeros(()))  # t

    @torch.no_grad()
    def project_(self) -> None:
        """Store ``|W_k|`` for every layer (the skips keep their sign)."""
        for layer in self.layers:
            layer.weight.abs_()

    def _split(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``A(x_b - c_j) + a`` as ``(B, H, n)`` from ``Ax_b`` and ``Ac_j``."""
        return F.linear(x, weight, bias)[:, None, :] - F.linear(self.centres, weight)[None]

    def convex_value(self, x: torch.Tensor) -> torch.Tensor:
        """``f(x - c_j)`` for every pair, ``(B, H)``."""
        check_features(x, self.in_features)
        first = self.layers[0]
        z = F.leaky_relu(self._split(x, first.weight.abs(), first.bias), self.negative_slope)
        for k, (layer, skip) in enumerate(zip(self.layers[1:], self.skips), start=1):
            z = F.linear(z, layer.weight.abs(), layer.bias) + self._split(x, skip.weight, skip.bias)
            if k < len(self.widths):
                z = F.leaky_relu(z, self.negative_slope)
        return z.squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.convex_value(x) * self.log_scale.exp()
