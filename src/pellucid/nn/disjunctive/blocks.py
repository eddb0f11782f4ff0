r"""Building blocks of disjunctive ("neural OR") networks.

* :class:`SoftMaxPool` -- a soft OR: each output is a temperature soft maximum of a group of units,
  ``y_j = tau * log((1/g) sum_{i in G_j} exp(z_i / tau))``.
* :class:`Mean` -- a conjunction of parts: the mean of each group of units.
* :class:`Scale` -- one learnable scalar times its input (the logit scale after a soft OR).
* :class:`PositiveConv2d` -- a convolution whose weights are ``softplus(v) >= 0``.
* :class:`GumbelConv2d` -- each filter picks ``k`` input channels per kernel position (a hard
  top-k of Gumbel-perturbed logits, straight-through gradients).
* :class:`L2Conv2d` -- the similarity ``-||patch - w||_2`` instead of ``<patch, w>``.
* :class:`MaxMatch` -- the best match of a module over input augmentations (rotations, flips).

Groups are always *consecutive* units of the last axis: ``n_groups`` groups of
``g = width / n_groups`` units, group ``j`` holding units ``j g .. (j + 1) g - 1``.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from pellucid.errors import InvalidInputError
from pellucid.nn.geometry import rotation_thetas
from pellucid.nn.metric.conv import l2_distance_conv2d

__all__ = ["GumbelConv2d", "L2Conv2d", "MaxMatch", "Mean", "PositiveConv2d", "Scale", "SoftMaxPool",
           "exponential_anneal"]


# -- argument checks ------------------------------------------------------------------------------

def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidInputError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _check_temperature(value, name: str = "temperature") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value <= 0:
        raise InvalidInputError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_image(x, channels: int, layer: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4 \
            or x.shape[1] != channels:
        raise InvalidInputError(f"{layer} input must be a float tensor (B, {channels}, H, W), got "
                                f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")


torch.fx.wrap("_check_image")  # one call in traced graphs (see _grouped below)


def _units(z: torch.Tensor, layer: str) -> int:
    """The width of ``z``'s last axis, or a one-line error unless ``z`` is a float tensor."""
    if not isinstance(z, torch.Tensor) or not z.is_floating_point() or z.dim() < 1:
        raise InvalidInputError(f"{layer} input must be a float tensor (..., units), got "
                                f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
    return z.shape[-1]


def _grouped(z: torch.Tensor, n_groups: int, layer: str) -> torch.Tensor:
    """``(..., n_groups * g) -> (..., n_groups, g)``, or a one-line error naming the widths."""
    width = _units(z, layer)
    if width == 0 or width % n_groups:
        raise InvalidInputError(f"{layer}: the input's last axis ({width} units) must split into "
                                f"{n_groups} equal groups (a positive multiple of {n_groups})")
    return z.unflatten(-1, (n_groups, width // n_groups))


# torch.fx records the check as one call in the graph instead of tracing into its Python branches,
# so models built from these layers stay traceable (the explainers rewrite traced graphs) and the
# traced module still checks its input.
torch.fx.wrap("_grouped")


def _inverse_softplus(w: torch.Tensor) -> torch.Tensor:
    """``v`` with ``softplus(v) = w`` for ``w > 0``: ``v = w + log(1 - exp(-w))`` (stable form)."""
    return w + torch.log(-torch.expm1(-w))


def _positive_init_(raw: torch.Tensor, fan_in: int) -> None:
    """``softplus(raw) ~ U(0, sqrt(3 / fan_in))`` (bounded away from 0), so ``E[w^2] = 1 / fan_in``."""
    bound = math.sqrt(3.0 / fan_in)
    with torch.no_grad():
        w = torch.empty_like(raw).uniform_(0.0, bound).clamp_min_(1e-3 * bound)
        raw.copy_(_inverse_softplus(w))


# -- soft OR, AND and the logit scale ---------------------------------------------------------------

class SoftMaxPool(nn.Module):
    r"""Soft OR over ``n_groups`` consecutive groups: ``(..., n_groups * g) -> (..., n_groups)``.

    ``y_j = tau * log( (1/g) * sum_{i in G_j} exp(z_i / tau) )``
    ``    = tau * (logsumexp_{i in G_j}(z_i / tau) - log g)``.

    ``mean_{G_j} z <= y_j <= max_{G_j} z`` (Jensen; ``log-mean-exp <= max``), ``y_j -> max`` as
    ``tau -> 0`` (the gap is at most ``tau log g``) and ``y_j -> mean`` as ``tau -> infinity``
    (the gap is about ``var_{G_j}(z) / (2 tau)``). Its gradient is the softmax ``softmax(z / tau)``
    over the group: every unit gets a share, the strongest the most.

    Computed as ``m + tau * log1p(mean(expm1((z - m) / tau)))`` with ``m`` the group max: the
    ``expm1``/``log1p`` pair keeps the large-``tau`` limit accurate in float32 (``logsumexp - log g``
    would cancel to ~``tau * 1e-7``), and the shift by the max avoids overflow for small ``tau``.
    ``m`` is detached: ``y`` does not depend on the shift, so the gradient is unchanged.
    """

    def __init__(self, n_groups: int, temperature: float = 1.0) -> None:
        super().__init__()
        self.n_groups = _check_positive_int(n_groups, "n_groups")
        self.temperature = _check_temperature(temperature)

    def set_temperature(self, temperature: float) -> None:
        self.temperature = _check_temperature(temperature)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        groups = _grouped(z, self.n_groups, "SoftMaxPool")  # (..., n_groups, g)
        m = groups.detach().amax(-1, keepdim=True)
        u = torch.expm1((groups - m) / self.temperature).mean(-1)  # in [1/g - 1, 0]
        return m.squeeze(-1) + self.temperature * torch.log1p(u)

    def extra_repr(self) -> str:
        return f"n_groups={self.n_groups}, temperature={self.temperature:g}"


class Mean(nn.Module):
    r"""Conjunction of parts: ``y_j = (1/g) sum_{i in G_j} z_i`` over consecutive groups of ``g`` units.

    Give the number of outputs ``n_groups`` (positional, as for :class:`SoftMaxPool`, so
    ``Mean(24)`` turns 120 units into 24 means of 5) *or* the group size ``group_size=g``
    (keyword: ``Mean(group_size=5)`` does the same for any width divisible by 5).
    """

    def __init__(self, n_groups: int | None = None, *, group_size: int | None = None) -> None:
        super().__init__()
        if (n_groups is None) == (group_size is None):
            raise InvalidInputError("Mean needs exactly one of n_groups (number of outputs) or "
                                    f"group_size (units per output), got n_groups={n_groups!r}, "
                                    f"group_size={group_size!r}")
        self.n_groups = None if n_groups is None else _check_positive_int(n_groups, "n_groups")
        self.group_size = None if group_size is None else _check_positive_int(group_size, "group_size")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.n_groups is not None:
            return _grouped(z, self.n_groups, "Mean").mean(-1)
        return _grouped_by_size(z, self.group_size).mean(-1)

    def extra_repr(self) -> str:
        return f"n_groups={self.n_groups}" if self.n_groups is not None else f"group_size={self.group_size}"


def _grouped_by_size(z: torch.Tensor, group_size: int) -> torch.Tensor:
    """``(..., n * group_size) -> (..., n, group_size)``, or a one-line error."""
    width = _units(z, "Mean")
    if width == 0 or width % group_size:
        raise InvalidInputError(f"Mean: the input's last axis ({width} units) must split into groups "
                                f"of group_size={group_size} (a positive multiple of {group_size})")
    return z.unflatten(-1, (width // group_size, group_size))


torch.fx.wrap("_grouped_by_size")


class Scale(nn.Module):
    """``y = s * x`` with one learnable scalar ``s`` (initialised to ``init``)."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        if isinstance(init, bool) or not isinstance(init, numbers.Real) or not math.isfinite(init):
            raise InvalidInputError(f"init must be a finite number, got {init!r}")
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x

    def extra_repr(self) -> str:
        return f"scale={float(self.scale):g}"


# -- constrained convolutions -------------------------------------------------------------------------

class PositiveConv2d(nn.Module):
    r"""Convolution with non-negative weights: ``y = conv(x, softplus(v)) + b``.

    The parameter is ``v`` (``weight_raw``); the effective weight ``w = softplus(v) > 0`` (``>= 0``
    once it underflows in floating point) whatever an optimiser does to ``v``. The bias ``b`` is
    unconstrained. Initialisation: ``w ~ U(0, sqrt(3 / fan_in))``, so ``E[w^2] = 1 / fan_in`` and
    a zero-mean, unit-variance input gives a unit-variance output (``fan_in = C k_h k_w / groups``);
    the positive mean ``fan_in E[w] E[x]`` is left to a following BatchNorm. The bias starts at 0.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.in_channels = _check_positive_int(in_channels, "in_channels")
        self.out_channels = _check_positive_int(out_channels, "out_channels")
        self.groups = _check_positive_int(groups, "groups")
        if in_channels % groups or out_channels % groups:
            raise InvalidInputError(f"groups={groups} must divide in_channels={in_channels} and "
                                    f"out_channels={out_channels}")
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.weight_raw = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        _positive_init_(self.weight_raw, self.weight_raw[0].numel())

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight ``softplus(v) >= 0``, ``(O, C / groups, k_h, k_w)``."""
        return F.softplus(self.weight_raw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image(x, self.in_channels, "PositiveConv2d")
        return F.conv2d(x, self.weight, self.bias,
                        self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
                f"bias={self.bias is not None}")


def exponential_anneal(step: int, total_steps: int, start: float, end: float) -> float:
    r"""``t(step) = start * (end / start) ** min(step / total_steps, 1)``: geometric from ``start``
    (step 0) to ``end`` (from ``total_steps`` on). Both temperatures must be finite and > 0."""
    start, end = _check_temperature(start, "start"), _check_temperature(end, "end")
    total_steps = _check_positive_int(total_steps, "total_steps")
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise InvalidInputError(f"step must be an integer >= 0, got {step!r}")
    return start * (end / start) ** min(step / total_steps, 1.0)


def _topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """1 at the ``k`` largest entries along axis 1 (ties: the lower channel index), 0 elsewhere."""
    return torch.zeros_like(scores).scatter_(1, scores.topk(k, dim=1).indices, 1.0)


def _relaxed_topk(scores: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    r"""Soft top-k along axis 1 (Xie & Ermon 2019): ``a_1 = s``, ``p_i = softmax(a_i / tau)``,
    ``a_{i+1} = a_i + log(1 - p_i)``, mask ``= sum_{i <= k} p_i`` (in [0, 1], sums to ``k``,
    tends to the hard top-k as ``tau -> 0``). The loop is over ``k``, not over data."""
    tiny = torch.finfo(scores.dtype).tiny
    soft = torch.zeros_like(scores)
    a = scores
    for _ in range(k):
        p = torch.softmax(a / temperature, dim=1)
        soft = soft + p
        a = a + (1 - p).clamp_min(tiny).log()  # a chosen channel is not chosen again
    return soft


class GumbelConv2d(nn.Module):
    r"""Each filter reads ``k`` input channels per kernel position, chosen by learnt logits.

    Logits ``L[o, c, p, q]`` score input channel ``c`` for filter ``o`` at kernel position
    ``(p, q)``; the weight is ``w = M * a`` with ``M`` the ``k``-hot channel mask and ``a[o, p, q]``
    a magnitude per filter and position, non-negative ``a = softplus(alpha)`` (``positive=True``,
    default: the log found the signed variant less expressive and noisier) or signed ``a = alpha``.

    * training: ``G ~ Gumbel(0, 1)`` i.i.d., ``M = topk_c(L + G)`` in the forward pass; the backward
      pass uses the relaxed top-k of ``(L + G) / tau`` (straight-through: ``M_hard + (M_soft -
      stop_grad(M_soft))``, whose value is exactly ``M_hard``). ``k = 1`` gives the Gumbel-softmax.
    * eval: ``M = topk_c(L)``, no noise.

    ``y = conv(x, M * a) + b``. Initialisation: ``L ~ N(0, 0.01^2)`` (close to uniform channel
    choice, so early training explores), ``a`` as :class:`PositiveConv2d` with ``fan_in = k k_h
    k_w`` (the non-zero taps of a filter), or ``U(-sqrt(3 / fan_in), sqrt(3 / fan_in))`` signed.

    The noise comes from ``generator`` (a :class:`torch.Generator` on the input's device, set at
    construction or as the attribute ``generator``) or else from torch's global RNG, as dropout.
    Anneal ``tau`` with :meth:`set_temperature`, e.g. ``set_temperature(exponential_anneal(step,
    total, 1.0, 0.1))``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, k: int = 1,
                 temperature: float = 1.0, stride=1, padding=0, dilation=1, bias: bool = False,
                 positive: bool = True, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.in_channels = _check_positive_int(in_channels, "in_channels")
        self.out_channels = _check_positive_int(out_channels, "out_channels")
        self.k = _check_positive_int(k, "k")
        if self.k > self.in_channels:
            raise InvalidInputError(f"k must be in 1..in_channels={in_channels}, got {k}")
        self.temperature = _check_temperature(temperature)
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.positive = bool(positive)
        self.generator = generator
        kh, kw = self.kernel_size
        self.logits = nn.Parameter(0.01 * torch.randn(out_channels, in_channels, kh, kw))
        self.magnitude_raw = nn.Parameter(torch.empty(out_channels, 1, kh, kw))
        fan_in = self.k * kh * kw
        if self.positive:
            _positive_init_(self.magnitude_raw, fan_in)
        else:
            bound = math.sqrt(3.0 / fan_in)
            nn.init.uniform_(self.magnitude_raw, -bound, bound)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def set_temperature(self, temperature: float) -> None:
        self.temperature = _check_temperature(temperature)

    @property
    def magnitude(self) -> torch.Tensor:
        """``a``: ``(O, 1, k_h, k_w)``, ``softplus(alpha)`` when ``positive`` else ``alpha``."""
        return F.softplus(self.magnitude_raw) if self.positive else self.magnitude_raw

    def mask(self) -> torch.Tensor:
        """The ``k``-hot channel mask ``(O, C, k_h, k_w)`` this forward pass uses (a fresh Gumbel
        draw in training mode, with the straight-through gradient; ``topk(L)`` in eval mode)."""
        if not self.training:
            return _topk_mask(self.logits.detach(), self.k)
        u = torch.rand(self.logits.shape, generator=self.generator, dtype=self.logits.dtype,
                       device=self.logits.device)
        tiny = torch.finfo(u.dtype).tiny
        scores = self.logits - torch.log(-torch.log(u.clamp_min(tiny)))  # L + Gumbel noise
        hard = _topk_mask(scores.detach(), self.k)
        soft = _relaxed_topk(scores, self.k, self.temperature)
        return hard + (soft - soft.detach())  # value: exactly `hard`; gradient: that of `soft`

    @property
    def weight(self) -> torch.Tensor:
        """``M * a`` for the current mode (a new Gumbel draw on each access in training)."""
        return self.mask() * self.magnitude

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image(x, self.in_channels, "GumbelConv2d")
        w = self.weight
        return F.conv2d(x, w, self.bias, self.stride,
                        self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, k={self.k}, "
                f"temperature={self.temperature:g}, stride={self.stride}, padding={self.padding}, "
                f"positive={self.positive}, bias={self.bias is not None}")


class L2Conv2d(nn.Module):
    r"""Euclidean similarity convolution: ``y[b, o, h, w] = -||patch_{h,w}(x_b) - w_o||_2``.

    The distance is :func:`~pellucid.nn.metric.conv.l2_distance_conv2d` (two convolutions, no
    unfolded patches), without the standardisation of
    :class:`~pellucid.nn.metric.conv.L2DistanceConv2d`. Zero padding counts as part of the patch.
    A dot-product initialisation (small weights around 0) would put every filter at the same
    distance from most patches, so the filters start as points of the data's value range:
    ``w ~ U(init_range)`` (default ``(0, 1)``, the range of pellucid's images). ``y <= 0``, and its
    scale grows like ``sqrt(C k^2)``: follow it with a normalisation (and train with a larger
    learning rate than a dot-product conv).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, init_range: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__()
        self.in_channels = _check_positive_int(in_channels, "in_channels")
        self.out_channels = _check_positive_int(out_channels, "out_channels")
        if not (isinstance(init_range, (tuple, list)) and len(init_range) == 2
                and all(isinstance(v, numbers.Real) and math.isfinite(v) for v in init_range)
                and init_range[0] <= init_range[1]):
            raise InvalidInputError(f"init_range must be finite (low, high) with low <= high, "
                                    f"got {init_range!r}")
        self.stride, self.padding, self.dilation = stride, padding, dilation
        shape = (out_channels, in_channels, *_pair(kernel_size))
        self.weight = nn.Parameter(torch.empty(shape).uniform_(float(init_range[0]), float(init_range[1])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image(x, self.in_channels, "L2Conv2d")
        return -l2_distance_conv2d(x, self.weight, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={tuple(self.weight.shape[-2:])}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}")


# -- max over input augmentations ---------------------------------------------------------------------

_FLIPS = {"hflip": -1, "vflip": -2}  # name -> image axis mirrored


class MaxMatch(nn.Module):
    r"""``y(x) = max_{a in A} m(a(x))``: the best match of module ``m`` over input augmentations.

    ``A`` is the identity plus ``augmentations``, each one of

    * a number: rotation by that many degrees, counter-clockwise as displayed, about the image
      centre (bilinear, zeros outside the image; ``90`` equals ``torch.rot90(x, 1, (-2, -1))``),
    * ``"hflip"`` / ``"vflip"``: mirror left-right / top-bottom (exact),
    * a callable ``(B, C, H, W) -> (B, C, H, W)``.

    All ``|A| B`` augmented images go through ``m`` in one call as a batch ordered ``(a, b)``; its
    output ``(|A| B, ...)`` is viewed as ``(|A|, B, ...)`` and maxed over ``a``. All rotations are
    one ``grid_sample`` call. The gradient flows to the augmentation that attains the max. A
    BatchNorm inside ``m`` in training mode takes its statistics over all ``|A| B`` images.
    """

    def __init__(self, module: nn.Module,
                 augmentations: Sequence[float | str | Callable] = (15.0, -15.0, "hflip")) -> None:
        super().__init__()
        if isinstance(augmentations, (str, numbers.Number)) or callable(augmentations):
            augmentations = (augmentations,)
        augmentations = tuple(augmentations)
        if not augmentations:
            raise InvalidInputError("augmentations must name at least one augmentation (a rotation "
                                    "angle in degrees, 'hflip', 'vflip' or a callable), got none")
        angles, flips, others = [], [], []
        for a in augmentations:
            if isinstance(a, str):
                if a not in _FLIPS:
                    raise InvalidInputError(f"unknown augmentation {a!r}; valid: a rotation angle in "
                                            "degrees, 'hflip', 'vflip' or a callable")
                flips.append(a)
            elif isinstance(a, numbers.Real) and not isinstance(a, bool):
                if not math.isfinite(a):
                    raise InvalidInputError(f"rotation angles must be finite degrees, got {a!r}")
                angles.append(float(a))
            elif callable(a):
                others.append(a)
            else:
                raise InvalidInputError(f"augmentation {a!r} is none of: a rotation angle in degrees, "
                                        "'hflip', 'vflip', a callable")
        self.module = module
        self.angles, self.flips, self.others = tuple(angles), tuple(flips), tuple(others)

    @property
    def n_augmentations(self) -> int:
        """``|A|``, the identity included."""
        return 1 + len(self.angles) + len(self.flips) + len(self.others)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (|A| B, C, H, W)``: identity, rotations, flips, callables, in that order."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
            raise InvalidInputError(f"MaxMatch input must be a float tensor (B, C, H, W), got "
                                    f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        b, c, h, w = x.shape
        views = [x]
        if self.angles:
            if h < 2 or w < 2:
                raise InvalidInputError(f"rotating needs images of at least 2 x 2 pixels, got {h} x {w}")
            theta = rotation_thetas(torch.tensor(self.angles, dtype=x.dtype, device=x.device))
            # rotate about the centre in pixel units: normalised coordinates scale x by 2/(W-1)
            # and y by 2/(H-1), so the off-diagonal terms carry the aspect ratio
            theta[:, 0, 1] *= (h - 1) / (w - 1)
            theta[:, 1, 0] *= (w - 1) / (h - 1)
            n_rot = theta.shape[0]
            grid = F.affine_grid(theta, [n_rot, b * c, h, w], align_corners=True)  # (P, H, W, 2)
            # images on the channel axis, angles on the batch axis: one grid per angle serves all
            src = x.reshape(1, b * c, h, w).expand(n_rot, b * c, h, w)
            rotated = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            views.append(rotated.reshape(n_rot * b, c, h, w))
        views += [x.flip(_FLIPS[f]) for f in self.flips]
        views += [a(x) for a in self.others]
        return torch.cat(views)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.module(self.augment(x))  # (|A| B, ...)
        return y.unflatten(0, (self.n_augmentations, x.shape[0])).amax(0)

    def extra_repr(self) -> str:
        return f"angles={self.angles}, flips={self.flips}, callables={len(self.others)}"
