"""Similarities from distances ``d`` (``(B, H)``, one column per centre): what a metric neuron fires.

* :func:`min_exp_similarity`  ``a = exp(-k (d - min_j d) / std_j d)`` (the data-init table uses k = 2;
  ``standardise=False`` gives the un-normalised UMAP-like ``exp(-(d - min_j d) sigma)``).
* :func:`umap_similarity`     ``d' = d - min_j d``; per row ``sigma`` with
  ``sum_j exp(-d'_j / sigma) = log2(k)``; ``a = exp(-d' / sigma)``.
* :func:`distance_softmax`    ``a = softmax(-s d)`` for a given ``s``; :class:`DistanceSoftmax` learns
  ``s = e^{sigma}``.
* :class:`EpsilonSoftmax`     ``a = softmax(-s [d_1, ..., d_H, epsilon])``: a constant "epsilon neuron"
  at distance ``epsilon`` wins whenever every centre is farther than ``epsilon``, i.e. the input is
  unknown and can be rejected. ``epsilon`` fixed, learned or a running mean of the distances.
"""

from __future__ import annotations

import math

import torch
import torch.fx
from torch import nn

from pellucid.errors import InvalidInputError

__all__ = ["DistanceSoftmax", "EpsilonSoftmax", "distance_softmax", "min_exp_similarity", "umap_similarity"]


def _check_distances(d: torch.Tensor) -> None:
    if not isinstance(d, torch.Tensor) or not d.is_floating_point() or d.dim() != 2:
        raise InvalidInputError(f"distances must be a float tensor (B, H), got "
                                f"{getattr(d, 'shape', type(d).__name__)}")


# torch.fx records this input check as one call (it reads tensor values, which a trace cannot),
# so traced copies (e.g. for excitation pullbacks) still check every input.
torch.fx.wrap("_check_distances")


def min_exp_similarity(d: torch.Tensor, k: float = 2.0, standardise: bool = True,
                       eps: float = 1e-8) -> torch.Tensor:
    """``exp(-k (d - min_j d) / std_j d)`` (``standardise=False``: ``exp(-k (d - min_j d))``)."""
    _check_distances(d)
    shifted = d - d.min(1, keepdim=True).values
    if standardise:
        shifted = shifted / (d.std(1, keepdim=True) + eps)
    return torch.exp(-k * shifted)


def distance_softmax(d: torch.Tensor, scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    """``softmax_j(-scale d_j)`` per row: the epsilon-softmax without its epsilon neuron."""
    _check_distances(d)
    return torch.softmax(-scale * d, dim=1)


def umap_similarity(d: torch.Tensor, k: int = 15, iterations: int = 64) -> torch.Tensor:
    """UMAP-calibrated: per row the ``sigma`` with ``sum_j exp(-d'_j/sigma) = log2(k)`` (bisection,
    all rows at once, on a log scale), ``d' = d - min_j d``; returns ``exp(-d'/sigma)``."""
    _check_distances(d)
    target = math.log2(k)
    if not 1 < target < d.shape[1]:
        raise InvalidInputError(f"need 2 < k < 2**H (log2(k) between 1 and H={d.shape[1]}), got k={k}")
    shifted = (d - d.min(1, keepdim=True).values).detach()
    lo = torch.full_like(shifted[:, :1], -30.0)  # log sigma bounds
    hi = torch.full_like(shifted[:, :1], 30.0)
    for _ in range(iterations):  # sum_j exp(-d'/sigma) increases with sigma
        mid = (lo + hi) / 2
        too_big = torch.exp(-shifted / mid.exp()).sum(1, keepdim=True) > target
        hi, lo = torch.where(too_big, mid, hi), torch.where(too_big, lo, mid)
    sigma = ((lo + hi) / 2).exp()
    return torch.exp(-(d - d.min(1, keepdim=True).values) / sigma)


class DistanceSoftmax(nn.Module):
    """``a = softmax(-e^{sigma} d)`` over the centres; ``sigma`` learnable (init ``log_scale``)."""

    def __init__(self, log_scale: float = 0.0) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(float(log_scale)))

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        return distance_softmax(d, self.log_scale.exp())


class EpsilonSoftmax(nn.Module):
    r"""``a = softmax(-s [d_1, ..., d_H, \epsilon])``, ``(B, H) -> (B, H + 1)``; the last column is
    the epsilon neuron. ``s = e^{sigma}`` is learnable.

    ``mode``: ``"fixed"`` (``epsilon`` a constant), ``"learned"`` (a parameter, kept positive as
    ``e^{log epsilon}``) or ``"running"`` (a buffer updated in training as
    ``epsilon <- momentum epsilon + (1 - momentum) mean(d)``, momentum 0.9; the first training
    batch sets it to ``mean(d)`` unless :meth:`set_epsilon` was called). The epsilon neuron has the
    largest activation iff ``min_j d_j > epsilon``: :meth:`rejects`.
    """

    MODES = ("fixed", "learned", "running")

    def __init__(self, epsilon: float | None = None, mode: str = "running", log_scale: float = 0.0,
                 momentum: float = 0.9) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise InvalidInputError(f"mode must be one of {self.MODES}, got {mode!r}")
        if epsilon is None and mode != "running":
            raise InvalidInputError(f"mode {mode!r} needs an epsilon > 0")
        if epsilon is not None:
            self._check_epsilon(epsilon)
        self.mode, self.momentum = mode, momentum
        self.log_scale = nn.Parameter(torch.tensor(float(log_scale)))
        value = torch.tensor(float(epsilon) if epsilon is not None else 1.0)
        if mode == "learned":
            self.log_epsilon = nn.Parameter(value.log())
        else:
            self.register_buffer("epsilon_value", value)
        self.register_buffer("initialised", torch.tensor(epsilon is not None))

    @staticmethod
    def _check_epsilon(epsilon: float) -> None:
        if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
            raise InvalidInputError(f"epsilon must be a finite number > 0, got {epsilon}")

    @property
    def epsilon(self) -> torch.Tensor:
        return self.log_epsilon.exp() if self.mode == "learned" else self.epsilon_value

    @torch.no_grad()
    def set_epsilon(self, epsilon: float) -> None:
        """Set the threshold distance (e.g. during the rejection protocol's epsilon search)."""
        self._check_epsilon(float(epsilon))
        if self.mode == "learned":
            self.log_epsilon.fill_(math.log(epsilon))
        else:
            self.epsilon_value.fill_(float(epsilon))
        self.initialised.fill_(True)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        _check_distances(d)
        if self.mode == "running" and self.training:
            with torch.no_grad():
                batch_mean = d.mean().to(self.epsilon_value)
                if bool(self.initialised):
                    self.epsilon_value.mul_(self.momentum).add_((1 - self.momentum) * batch_mean)
                else:
                    self.epsilon_value.copy_(batch_mean)
                    self.initialised.fill_(True)
        eps = self.epsilon.to(d).expand(d.shape[0], 1)  # (B, 1)
        return torch.softmax(-self.log_scale.exp() * torch.cat([d, eps], dim=1), dim=1)  # (B, H+1)

    def rejects(self, d: torch.Tensor) -> torch.Tensor:
        """``True`` where the epsilon neuron fires most, i.e. ``min_j d_j > epsilon``."""
        _check_distances(d)
        return d.min(1).values > self.epsilon.to(d)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, epsilon={float(self.epsilon):.4g}"
