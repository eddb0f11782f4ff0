r"""A decision-based L-inf attack: ray search over sign directions (after Chen & Gu 2020, RayS).

Only the model's decisions are used, so gradient masking cannot hide anything from it. For an
image :math:`x` of class :math:`y` and a direction :math:`d \in \{-1, +1\}^D`, the ray
:math:`x(r) = \Pi_{[lo, hi]}(x + r d)` has L-inf distance at most :math:`r` from :math:`x`; the
attack looks for the direction whose ray leaves class :math:`y` at the smallest radius

.. math:: r(d) = \min \{ r : \arg\max f(x(r)) \ne y \},

found by bisection to a tolerance. It starts from the direction towards an image of the other
class, :math:`d = \mathrm{sign}(x_o - x)` (ties :math:`+1`), and then flips the signs of blocks
of :math:`d` hierarchically (the whole image, halves, quarters, ... in flattened order; then
again from the whole image): a flip is kept when the ray already leaves class :math:`y` at the
current radius (one query), and then :math:`r` is bisected down. An image is broken once
:math:`r(d) \le \epsilon`. All images search at once, each with its own direction and radius,
and each stops at its own query budget.
"""

from __future__ import annotations

import torch
from torch import nn

from pellucid.models.inference import attack_mode, batched_logits

__all__ = ["other_class_images", "ray_search"]


def other_class_images(x: torch.Tensor, y: torch.Tensor, pool: torch.Tensor, pool_labels: torch.Tensor,
                       pool_predictions: torch.Tensor) -> torch.Tensor:
    """For each image of ``x``, the nearest (L2) image of ``pool`` whose label and prediction
    both differ from its label; the image itself where the pool has none."""
    dist = torch.cdist(x.flatten(1), pool.flatten(1))  # (n, m)
    allowed = (pool_labels[None, :] != y[:, None]) & (pool_predictions[None, :] != y[:, None])
    dist = dist.masked_fill(~allowed, float("inf"))
    nearest = dist.argmin(1)
    found = allowed.any(1).view(-1, *[1] * (x.dim() - 1))
    return torch.where(found, pool[nearest], x)


class _Rays:
    """The images' rays: ``point(r)`` and the decision ``leaves(d, r)`` (one query per image)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 value_range: tuple[float, float], batch_size: int) -> None:
        self.model, self.x, self.y = model, x, y
        self.value_range, self.batch_size = value_range, batch_size
        self.used = torch.zeros(len(x), dtype=torch.long, device=x.device)

    def point(self, idx: torch.Tensor, d: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        x = self.x[idx]
        return (x + r.view(-1, *[1] * (x.dim() - 1)) * d.view_as(x)).clamp(*self.value_range)

    def leaves(self, idx: torch.Tensor, d: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Whether the model's decision at ``point`` differs from the label (``idx``'s queries + 1)."""
        self.used[idx] += 1
        logits = batched_logits(self.model, self.point(idx, d, r), self.batch_size)
        return logits.argmax(1) != self.y[idx]

    def bisect(self, idx: torch.Tensor, d: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
               tol: float, eps: float) -> torch.Tensor:
        """Smallest radius in ``(lo, hi]`` where the ray leaves the class (``hi`` does), to ``tol``;
        stops early where ``hi <= eps`` (broken)."""
        lo, hi = lo.clone(), hi.clone()
        while True:
            open_ = ((hi - lo) > tol) & (hi > eps)
            if not bool(open_.any()):
                return hi
            sub = torch.nonzero(open_).squeeze(1)
            mid = (lo[sub] + hi[sub]) / 2
            out = self.leaves(idx[sub], d[sub], mid)
            hi[sub] = torch.where(out, mid, hi[sub])
            lo[sub] = torch.where(out, lo[sub], mid)


def ray_search(model: nn.Module, x: torch.Tensor, y: torch.Tensor, toward: torch.Tensor, *,
               eps: float, queries: int, value_range: tuple[float, float] = (0.0, 1.0),
               tol: float = 1e-3, batch_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray search from the directions ``sign(toward - x)``; returns ``(points, radii)``: per image
    the ray's point at ``min(r, eps)`` (inside the ball; misclassified where ``r <= eps``) and the
    smallest radius found (``inf``: no ray left the class). ``queries`` per image at most (a
    bisection in progress may finish past it by at most ``log2(range / tol)`` queries)."""
    span = float(value_range[1] - value_range[0])
    n = len(x)
    d = torch.where(toward.flatten(1) >= x.flatten(1), 1.0, -1.0).to(x.dtype)
    radius = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
    with attack_mode(model):
        rays = _Rays(model, x, y, value_range, batch_size)
        everyone = torch.arange(n, device=x.device)
        full = torch.full((n,), span, dtype=x.dtype, device=x.device)
        out = rays.leaves(everyone, d, full)
        start = torch.nonzero(out).squeeze(1)
        radius[start] = rays.bisect(start, d[start], torch.zeros_like(full[start]), full[start], tol, eps)
        _flip_blocks(rays, d, radius, queries, eps, span, tol)
        final = rays.point(everyone, d, radius.clamp(max=eps))
    return final, radius


def _flip_blocks(rays: _Rays, d: torch.Tensor, radius: torch.Tensor, queries: int, eps: float,
                 span: float, tol: float) -> None:
    """The hierarchical block flips (module docstring), updating ``d`` and ``radius`` in place."""
    dim = d.shape[1]
    level = 0
    while True:
        blocks = min(2 ** level, dim)
        size = -(-dim // blocks)
        for b in range(blocks):
            active = torch.nonzero((rays.used < queries) & (radius > eps)).squeeze(1)
            if not len(active):
                return
            trial = d[active].clone()
            trial[:, b * size:(b + 1) * size] *= -1
            r = radius[active].clamp(max=span)
            better = rays.leaves(active, trial, r)
            keep = active[better]
            if len(keep):
                new = rays.bisect(keep, trial[better], torch.zeros_like(r[better]), r[better], tol, eps)
                improved = new < radius[keep]
                d[keep[improved]], radius[keep[improved]] = trial[better][improved], new[improved]
        level = 0 if size == 1 else level + 1
