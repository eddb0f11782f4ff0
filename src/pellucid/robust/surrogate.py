r"""Surrogate gradients for the white-box network: exact forward, smooth backward (BPDA).

The white-box network's input gradient is a poor guide for an attack: the TwoStep squashing is
flat away from its thresholds, each max over poses passes the gradient to one winner only, and the
rectifiers pass none through units that are off. Backward-pass differentiable approximation
(Athalye et al. 2018) keeps the forward exact and differentiates a smooth surrogate of each such
component instead, evaluated at the exact forward's activations:

- **TwoStep** :math:`y(x)` (see :class:`pellucid.nn.TwoStep`) is built from softsign transitions
  :math:`u = d / (s_k + |d|)`, :math:`d = \tilde x - T`, of width :math:`s_k` around each threshold.
  The surrogate is the same function with every width widened by the temperature,
  :math:`s_k \to s_k + \tau_{\mathrm{twostep}}`: it keeps the anchor values (:math:`\pm a` at the
  thresholds, 0 at :math:`\tilde x = 0`) and spreads each step's slope over a band of width
  :math:`\sim \tau` around the threshold, so pixels near a threshold get gradient. As
  :math:`\tau \to 0` it is the layer itself, so its gradient tends to the exact one.
- **max over poses** :math:`y = \max_p s_p` (conv, affine and logical layers): backward through the
  soft pool :math:`\sum_p w_p s_p`, :math:`w = \mathrm{softmax}(s / \tau)`, i.e.
  :math:`\partial y / \partial s_p = w_p (1 + (s_p - y) / \tau)`; :math:`\tau \to 0` gives the
  one-hot gradient of the hard max (unique maximiser). For the conv layer's 64 kernels, scores
  more than :math:`50\tau` below the max count as :math:`50\tau` below (weights under
  :math:`e^{-50}`, kept out of float32's slow denormal range).
- **ReLU** :math:`y = \max(z, 0)`: backward gate :math:`\sigma(z / \tau)` instead of
  :math:`1[z > 0]` (the derivative of :math:`\tau\,\mathrm{softplus}(z / \tau)`).

The max and ReLU surrogates are the excitation gates of :mod:`pellucid.explain.gates`. With
``smooth_forward=True`` the forward is the smooth function itself (TwoStep widened, soft pools
:math:`\sum_p w_p s_p`, softplus): a smooth copy of the network, for transfer attacks.

:func:`surrogate_gradients` switches a model to surrogates for the duration of a ``with`` block;
:func:`whitebox_parts` returns the intermediate values that the evidence and feature losses use.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from pellucid.errors import ConfigError
from pellucid.explain.base import model_lock
from pellucid.explain.gates import ExcitationGates, check_temperature, sigmoid_gate, soft_max_vjp
from pellucid.nn import AffineFeatures, LogicalFeatures, RotationConvFeatures, TwoStep
from pellucid.nn.semantic.base import SemanticFeatures

__all__ = ["LayerSurrogates", "SurrogateTemperatures", "has_surrogates", "is_whitebox",
           "soft_max_value", "surrogate_gradients", "twostep_widened", "whitebox_parts"]

_MISSING = object()
_BLOCK = 8  # images per block of the conv surrogate (its scores stay in cache)
_FLOOR = 50.0  # softmax exponents below -50 are raised to -50 (see _floor_scores)


@dataclass(frozen=True)
class SurrogateTemperatures:
    """Temperature of each surrogate: TwoStep widths (in the layer's ``2x - 1`` units), the conv
    and affine max over poses, the rectifiers' gates, and the logical layer's max over poses."""

    twostep: float
    poses: float
    relu: float
    logical: float

    def __post_init__(self) -> None:
        for name in ("twostep", "poses", "relu", "logical"):
            object.__setattr__(self, name, _temperature(getattr(self, name), name))

    @classmethod
    def of(cls, temperature: float, **overrides: float | None) -> "SurrogateTemperatures":
        """Every component at ``temperature`` unless given in ``overrides`` (``None``: not given)."""
        t = _temperature(temperature, "temperature")
        return cls(**{k: t if overrides.get(k) is None else overrides[k]
                      for k in ("twostep", "poses", "relu", "logical")})


def _temperature(value: float, name: str) -> float:
    try:
        return check_temperature(value)
    except ValueError:
        raise ConfigError(f"{name} must be a positive finite number, got {value!r}") from None


# --- the surrogate functions ------------------------------------------------------------------

def twostep_widened(layer: TwoStep, x: torch.Tensor, tau: float) -> torch.Tensor:
    r"""The TwoStep function of ``layer`` with every width :math:`s_k` replaced by
    :math:`s_k + \tau`, differentiable in ``x`` only (parameters detached).

    :math:`\tilde x = 2x - 1`; pieces :math:`\tilde x < T_0`: external :math:`(T_0, s_0)`;
    :math:`T_0 \le \tilde x < 0`: internal :math:`(T_0, s_1)`; :math:`0 \le \tilde x < T_1`:
    internal :math:`(T_1, s_2)`; :math:`\tilde x \ge T_1`: external :math:`(T_1, s_3)`. Internal:
    :math:`a (u + \sigma) / |\sigma|`, :math:`\sigma = T / (s + |T|)`; external:
    :math:`u / D + \mathrm{sgn}(T) a`, :math:`D = \max_{\tilde x = \pm 1} |u| / (1 - a)`.
    """
    p = {k: getattr(layer, k).detach().to(x.dtype) for k in ("t0", "t1", "a0", "a1", "scales")}
    xt = 2 * x - 1
    big_t0, big_t1 = 2 * p["t0"] - 1, 2 * p["t1"] - 1
    s = p["scales"] + tau
    pieces = (_external(xt, big_t0, s[0], p["a0"]), _internal(xt, big_t0, s[1], p["a0"]),
              _internal(xt, big_t1, s[2], p["a1"]), _external(xt, big_t1, s[3], p["a1"]))
    with torch.no_grad():
        negative, below_t0, below_t1 = xt < 0, xt < big_t0, xt < big_t1
    return torch.where(negative, torch.where(below_t0, pieces[0], pieces[1]),
                       torch.where(below_t1, pieces[2], pieces[3]))


def _softsign(xt: torch.Tensor, big_t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    d = xt - big_t
    return d / (s + d.abs())


def _internal(xt, big_t, s, a):
    sigma = big_t / (s + big_t.abs())
    return a * (_softsign(xt, big_t, s) + sigma) / sigma.abs()


def _external(xt, big_t, s, a):
    ends = big_t.new_tensor([-1.0, 1.0])
    scale = _softsign(ends, big_t, s).abs().max() / (1 - a)
    return _softsign(xt, big_t, s) / scale + torch.sign(big_t) * a


def soft_max_value(x: torch.Tensor, dim: int, tau: float) -> torch.Tensor:
    r""":math:`\sum_k w_k x_k`, :math:`w = \mathrm{softmax}(x / \tau)` along ``dim`` (smooth forward)."""
    return (torch.softmax(x / tau, dim=dim) * x).sum(dim)


def _conv_input_grad(grad_scores: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    r"""Input gradient of the "same" cross-correlation :math:`s_k[p] = \sum_t w_k[t]\,x[p + t]`:
    :math:`\partial L / \partial x[q] = \sum_{p + t = q} \sum_k g_k[p]\,w_k[t]`, as one matrix
    product over the kernels and a fold over the taps (``grad_scores`` channels last
    ``(B, H, W, K)``, ``weight`` ``(K, 1, k, k)``)."""
    b, h, w, n_k = grad_scores.shape
    k = weight.shape[-1]
    pad = k // 2
    cols = grad_scores.reshape(-1, n_k) @ weight.reshape(n_k, k * k)  # (B*H*W, taps)
    cols = cols.view(b, h * w, k * k).transpose(1, 2)  # (B, taps, H*W)
    out = F.fold(cols, (h + 2 * pad, w + 2 * pad), k)  # (B, 1, H + 2 pad, W + 2 pad)
    return out[..., pad:pad + h, pad:pad + w]


def _floor_scores(scores: torch.Tensor, dim: int, tau: float) -> torch.Tensor:
    """Scores raised to at least ``max - 50 tau`` along ``dim``: their softmax weights stay above
    ``exp(-50) / K`` instead of sinking into float32's denormal range, whose arithmetic runs
    about 100x slower on x86 (a change of the weights below 1e-21)."""
    return torch.maximum(scores, scores.amax(dim, keepdim=True) - _FLOOR * tau)


class _SoftConvPoseMax(torch.autograd.Function):
    r"""Forward: :math:`\max_k (x \star w_k)` per pixel (``smooth``: the soft pool
    :math:`\sum_k w_k s_k` itself); backward: the soft pool over the kernels
    (:func:`pellucid.explain.gates.soft_max_vjp`). Saves only ``x``: the scores are recomputed
    in backward, a few images at a time so that each block's ``(b, H, W, K)`` scores stay in
    cache (the softmax and its backward are bound by memory traffic)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, tau: float, smooth: bool) -> torch.Tensor:
        ctx.tau, ctx.weight = tau, weight
        ctx.save_for_backward(x)
        pad = weight.shape[-1] // 2
        pool = (lambda s: soft_max_value(_floor_scores(s, 1, tau), 1, tau).unsqueeze(1)) if smooth \
            else (lambda s: s.amax(1, keepdim=True))
        return torch.cat([pool(F.conv2d(xb, weight, padding=pad)) for xb in x.split(_BLOCK)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        weight, pad = ctx.weight, ctx.weight.shape[-1] // 2
        out = []
        for xb, gb in zip(x.split(_BLOCK), grad.split(_BLOCK)):
            scores = F.conv2d(xb, weight, padding=pad).permute(0, 2, 3, 1).contiguous()  # (b, H, W, K)
            g = soft_max_vjp(_floor_scores(scores, -1, ctx.tau), gb.squeeze(1).unsqueeze(-1), -1,
                             ctx.tau, False)
            out.append(_conv_input_grad(g, weight))
        return torch.cat(out), None, None, None


class _ExactForward(torch.autograd.Function):
    """Forward: ``exact`` (a copy, bit for bit); backward: the whole gradient goes to ``soft``."""

    @staticmethod
    def forward(ctx, exact: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        return exact.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, grad


def is_whitebox(model: nn.Module) -> bool:
    """Whether ``model`` has the white-box network's layers (``twostep``, ``conv``, ``affine``,
    ``logical``) that :func:`whitebox_parts` and the evidence and feature losses read."""
    kinds = {"twostep": TwoStep, "conv": RotationConvFeatures, "affine": AffineFeatures,
             "logical": LogicalFeatures}
    return all(isinstance(getattr(model, k, None), t) for k, t in kinds.items())


def has_surrogates(model: nn.Module) -> bool:
    """Whether any module of ``model`` has a surrogate (a TwoStep or a semantic-feature layer)."""
    return any(isinstance(m, (TwoStep, SemanticFeatures)) for m in model.modules())


class LayerSurrogates:
    """The surrogate of each layer for one temperature setting.

    ``temperatures=None``: the exact layers (plain autograd). Otherwise, with ``smooth_forward``
    false, each method returns the exact value with the surrogate's gradient; with it true, the
    surrogate's value and gradient. Posed weights are computed once per layer, as constants.
    """

    def __init__(self, temperatures: SurrogateTemperatures | None, smooth_forward: bool = False) -> None:
        self.temperatures, self.smooth_forward = temperatures, bool(smooth_forward)
        self._posed: dict[int, torch.Tensor] = {}
        if temperatures is not None:
            self.pose_gates = ExcitationGates(sigmoid_gate, temperatures.poses)
            self.logical_gates = ExcitationGates(sigmoid_gate, temperatures.logical)
            self.relu_gates = ExcitationGates(sigmoid_gate, temperatures.relu)

    def posed(self, module: SemanticFeatures) -> torch.Tensor:
        key = id(module)
        if key not in self._posed:
            with torch.no_grad():
                self._posed[key] = module.posed_weights().detach()
        return self._posed[key]

    def _needs_soft(self, x: torch.Tensor) -> bool:
        return self.temperatures is not None and (self.smooth_forward or
                                                  (torch.is_grad_enabled() and x.requires_grad))

    def layer(self, module: nn.Module, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``module(x)`` with its surrogate (see the class docstring); other call forms, such as
        ``return_poses=True``, run the exact layer."""
        exact = functools.partial(type(module).forward, module)
        if args or kwargs or not self._needs_soft(x):
            return exact(x, *args, **kwargs)
        soft = self._soft_layer(module, x)
        if self.smooth_forward:
            return soft
        with torch.no_grad():
            value = exact(x)
        return _ExactForward.apply(value, soft)

    def _soft_layer(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if isinstance(module, TwoStep):
            return twostep_widened(module, x, self.temperatures.twostep)
        return self.activation(module, self._soft_pose_max(module, x))

    def _soft_pose_max(self, module: SemanticFeatures, x: torch.Tensor) -> torch.Tensor:
        if isinstance(module, RotationConvFeatures):
            k = self.posed(module).shape[-1]
            return _SoftConvPoseMax.apply(x, self.posed(module).reshape(-1, 1, k, k),
                                          self.temperatures.poses, self.smooth_forward)
        scores = module.match(x, self.posed(module))  # (B, F, P, ...)
        logical = isinstance(module, LogicalFeatures)
        if self.smooth_forward:
            t = self.temperatures
            return soft_max_value(scores, 2, t.logical if logical else t.poses)
        return (self.logical_gates if logical else self.pose_gates).max(scores, 2)

    def pose_max(self, module: SemanticFeatures, x: torch.Tensor) -> torch.Tensor:
        """The layer's best match over poses, before its activation (exact value; surrogate
        gradient, or surrogate value too with ``smooth_forward``)."""
        if self.temperatures is None or not self._needs_soft(x):
            return module.match(x, self.posed(module)).amax(dim=2)
        return self._soft_pose_max(module, x)

    def activation(self, module: SemanticFeatures, best: torch.Tensor) -> torch.Tensor:
        """The layer's activation of its best match, rectifiers with the sigmoid gate (or
        softplus with ``smooth_forward``)."""
        relu = self._relu if self._needs_soft(best) else F.relu
        if isinstance(module, RotationConvFeatures):
            return relu(best / module.scale)
        if isinstance(module, AffineFeatures):
            return relu(best)
        return module.activation(best)  # the logical layer's identity, or another layer's own

    def _relu(self, z: torch.Tensor) -> torch.Tensor:
        if self.smooth_forward:
            return F.softplus(z, beta=1.0 / self.temperatures.relu)
        return self.relu_gates.relu(z)


@contextlib.contextmanager
def surrogate_gradients(model: nn.Module, temperature: float = 0.1, *, twostep: float | None = None,
                        poses: float | None = None, relu: float | None = None,
                        logical: float | None = None,
                        smooth_forward: bool = False) -> Iterator[LayerSurrogates]:
    """Inside the block, every TwoStep and semantic-feature layer of ``model`` runs its surrogate.

    ``temperature`` applies to every component unless ``twostep``, ``poses`` (conv and affine max
    over poses), ``relu`` or ``logical`` set its own; each must be a finite number > 0. Forward
    values stay exact (``torch.equal`` to the plain model's) unless ``smooth_forward``; parameters
    get no gradient inside the block. The layers' ``forward`` is replaced on the instances for the
    block and restored on exit, also on errors; the block holds the model's lock
    (:func:`pellucid.explain.base.model_lock`), so explainers and other surrogate blocks on the
    same model wait. Yields the :class:`LayerSurrogates` in use.
    """
    temps = SurrogateTemperatures.of(temperature, twostep=twostep, poses=poses, relu=relu,
                                     logical=logical)
    surrogates = LayerSurrogates(temps, smooth_forward)
    layers = [m for m in model.modules() if isinstance(m, (TwoStep, SemanticFeatures))]
    with model_lock(model):
        saved: list[tuple[nn.Module, object]] = []
        try:
            for m in layers:
                saved.append((m, m.__dict__.get("forward", _MISSING)))
                m.forward = functools.partial(surrogates.layer, m)
            yield surrogates
        finally:
            for m, old in reversed(saved):
                if old is _MISSING:
                    m.__dict__.pop("forward", None)
                else:
                    m.forward = old


def whitebox_parts(model: nn.Module, x: torch.Tensor,
                   surrogates: LayerSurrogates | None = None) -> dict[str, torch.Tensor]:
    """The white-box network's intermediate values on ``x``: ``pixels`` (TwoStep), ``conv``,
    ``affine_pre`` (the affine layer's best match over poses, before its ReLU), ``affine`` and
    ``logits`` (equal to ``model(x)``), through ``surrogates`` (``None``: the exact layers)."""
    s = surrogates or LayerSurrogates(None)
    pixels = s.layer(model.twostep, x)
    conv = s.layer(model.conv, pixels)
    affine_pre = s.pose_max(model.affine, conv)
    affine = s.activation(model.affine, affine_pre)
    return {"pixels": pixels, "conv": conv, "affine_pre": affine_pre, "affine": affine,
            "logits": s.layer(model.logical, affine)}
