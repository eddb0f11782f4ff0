r"""Auto-PGD (Croce & Hein 2020) in L-inf on any differentiable objective, vectorised over images.

The adaptive attacks need APGD on losses ART does not offer (margins of intermediate evidence,
feature losses) and through surrogate gradients, and they need to stop attacking an image as soon
as the *real* model misclassifies it. Here the attack ascends ``objective(x, y) -> (loss, margin)``:
``loss`` (per image, differentiable) gives the direction, ``margin`` (per image, no gradient: the
true logit minus the best other of the model under attack, ``<= 0`` where it misclassifies)
decides success. For a white-box attack both come from one forward pass; for a transfer attack
the loss comes from another model and the margin from the target.

Per image, with :math:`\Pi` the projection onto the eps-ball around :math:`x` and the value range,
step size :math:`\eta_0 = 2\epsilon` and momentum :math:`\alpha = 0.75`:

.. math::
    z^{(k+1)} = \Pi\big(x^{(k)} + \eta\,\mathrm{sign}\,\nabla L(x^{(k)})\big), \quad
    x^{(k+1)} = \Pi\big(x^{(k)} + \alpha (z^{(k+1)} - x^{(k)}) + (1 - \alpha)(x^{(k)} - x^{(k-1)})\big)

(:math:`\alpha = 1` at the first step). At the checkpoints :math:`w_j = \lceil p_j N \rceil`,
:math:`p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + \max(p_j - p_{j-1} - 0.03, 0.06)`, the step halves and
the iterate returns to the best point :math:`x_{\max}` when the loss rose in fewer than
:math:`\rho = 75\,\%` of the steps since the last checkpoint, or when neither :math:`\eta` nor the
best loss changed since then. An image leaves the batch when its margin is ``<= 0``; for every
image the attack returns the point of lowest margin it visited (all inside the ball).
"""

from __future__ import annotations

import math
import sys
from typing import Callable

import torch

from pellucid._device import draw_device
from tqdm.auto import tqdm

__all__ = ["Objective", "apgd_checkpoints", "apgd_objective", "project_linf"]

# objective(x, y) -> (loss (B,) with a graph to x, margin (B,) without)
Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

_RHO, _MOMENTUM = 0.75, 0.75


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations :math:`w_j = \\lceil p_j N \\rceil` (``0 < w_j < steps``) where APGD may
    halve its step (see the module docstring)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    at = (math.ceil(round(q * steps, 9)) for q in p[1:])  # round: 0.57 * 100 is 57, not 58
    return sorted({w for w in at if 0 < w < steps})


def project_linf(z: torch.Tensor, x: torch.Tensor, eps: float,
                 value_range: tuple[float, float]) -> torch.Tensor:
    """:math:`\\Pi(z)`: the nearest point to ``z`` in the L-inf ``eps``-ball around ``x`` and
    the ``value_range`` box (both are boxes, so clipping to one then the other is exact)."""
    return torch.min(torch.max(z, x - eps), x + eps).clamp(*value_range)


def _evaluate(objective: Objective, x: torch.Tensor, y: torch.Tensor):
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        loss, margin = objective(leaf, y)
        (grad,) = torch.autograd.grad(loss.sum(), leaf, allow_unused=True)
    grad = torch.zeros_like(leaf) if grad is None else grad
    return loss.detach(), grad, margin.detach()


class _Batch:
    """Per-image state of one attack run (APGD, FAB); ``keep(mask)`` drops the images that left the batch."""

    def __init__(self, **tensors: torch.Tensor) -> None:
        self.__dict__.update(tensors)

    def keep(self, mask: torch.Tensor) -> None:
        for name, value in list(self.__dict__.items()):
            self.__dict__[name] = value[mask]


def _apgd_batch(objective: Objective, x0: torch.Tensor, y: torch.Tensor, start: torch.Tensor,
                eps: float, steps: int, value_range: tuple[float, float],
                best: torch.Tensor, best_margin: torch.Tensor, bar) -> None:
    """One APGD run from ``start``; writes improvements into ``best``/``best_margin`` in place."""
    proj = lambda z, s: project_linf(z, s.x0, eps, value_range)  # noqa: E731
    ids = torch.arange(len(x0), device=x0.device)
    x = project_linf(start, x0, eps, value_range)
    f, g, m = _evaluate(objective, x, y)
    s = _Batch(ids=ids, x0=x0, y=y, x=x, f=f, g=g, x_prev=x.clone(), f_max=f.clone(), x_max=x.clone(),
               g_max=g.clone(), eta=torch.full_like(f, 2 * eps), count=torch.zeros_like(f),
               f_ckpt=f.clone(), eta_ckpt=torch.full_like(f, 2 * eps))
    _record(s, x, m, best, best_margin)
    if not _drop_broken(s, m):
        return
    checkpoints, last = set(apgd_checkpoints(steps)), 0
    for k in range(1, steps):
        alpha = 1.0 if k == 1 else _MOMENTUM
        eta = s.eta.view(-1, *[1] * (x0.dim() - 1))
        z = proj(s.x + eta * s.g.sign(), s)
        x_new = proj(s.x + alpha * (z - s.x) + (1 - alpha) * (s.x - s.x_prev), s)
        f, g, m = _evaluate(objective, x_new, s.y)
        bar.update(len(s.ids))
        _record(s, x_new, m, best, best_margin)
        s.count += (f > s.f).to(f.dtype)
        up = f > s.f_max
        s.f_max, s.x_max[up], s.g_max[up] = torch.where(up, f, s.f_max), x_new[up], g[up]
        s.x_prev, s.x, s.f, s.g = s.x, x_new, f, g
        if k in checkpoints:
            _checkpoint(s, k - last)
            last = k
        if not _drop_broken(s, m):
            return


def _record(s: _Batch, x: torch.Tensor, m: torch.Tensor, best: torch.Tensor,
            best_margin: torch.Tensor) -> None:
    better = m < best_margin[s.ids]
    best[s.ids[better]], best_margin[s.ids[better]] = x[better], m[better]


def _drop_broken(s: _Batch, m: torch.Tensor) -> bool:
    """Remove misclassified images from the batch; ``False`` when none is left."""
    alive = m > 0
    if not bool(alive.all()):
        s.keep(alive)
    return bool(alive.any())


def _checkpoint(s: _Batch, since: int) -> None:
    """Halve the step (and return to the best point) where the loss stalled since the last one."""
    stalled = s.count < _RHO * since
    unchanged = (s.eta == s.eta_ckpt) & (s.f_max == s.f_ckpt)
    reduce = stalled | unchanged
    s.eta_ckpt, s.f_ckpt = s.eta.clone(), s.f_max.clone()
    s.eta = torch.where(reduce, s.eta / 2, s.eta)
    s.x[reduce], s.g[reduce], s.f[reduce] = s.x_max[reduce], s.g_max[reduce], s.f_max[reduce]
    s.x_prev[reduce] = s.x_max[reduce]
    s.count.zero_()


def apgd_objective(objective: Objective, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                   steps: int, restarts: int = 1, start: torch.Tensor | None = None,
                   value_range: tuple[float, float] = (0.0, 1.0),
                   generator: torch.Generator | None = None, batch_size: int = 256,
                   progress: bool = False, desc: str = "APGD") -> tuple[torch.Tensor, torch.Tensor]:
    """APGD ascending ``objective`` on ``(x, y)``; returns ``(points, margins)``: per image the
    visited point of lowest margin (inside the ball) and that margin.

    ``restarts`` runs, each on the images not yet broken: the first from ``start`` when given
    (e.g. the best point an earlier attack found), the others from uniform random points in
    the ball. ``margins`` start at ``+inf`` (no point visited yet).
    """
    best = x.detach().clone()
    best_margin = torch.full((len(x),), float("inf"), dtype=x.dtype, device=x.device)
    bar = tqdm(total=steps * len(x) * restarts, desc=desc, unit="img-step", leave=False,
               disable=None if progress else True, file=sys.stderr)
    for r in range(restarts):
        idx = torch.nonzero(best_margin > 0).squeeze(1)
        if not len(idx):
            break
        if r == 0 and start is not None:
            init = start[idx]
        else:
            noise = torch.rand(x[idx].shape, generator=generator, device=draw_device(generator),
                               dtype=torch.float32).to(x.device, x.dtype)
            init = x[idx] + eps * (2 * noise - 1)
        for pos in torch.arange(len(idx), device=x.device).split(batch_size):
            part = idx[pos]
            sub_best, sub_margin = best[part], best_margin[part]
            _apgd_batch(objective, x[part], y[part], init[pos], eps, steps, value_range, sub_best,
                        sub_margin, bar)
            best[part], best_margin[part] = sub_best, sub_margin
    bar.close()
    return best, best_margin
