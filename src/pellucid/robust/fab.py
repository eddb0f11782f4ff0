r"""FAB-T (Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary
attack", ICML 2020), targeted, L-inf, as AutoAttack's "standard" version runs it: ``fab-t-native``.

FAB searches for the adversarial example *closest* to the clean image :math:`x_0` rather than the
worst point of the eps-ball. For the true class :math:`y` and a target :math:`t`, the decision
function :math:`g(x) = z_t(x) - z_y(x)` (:math:`z` the logits) is linearised at the iterate
:math:`x_k`, with :math:`w_k = \nabla g(x_k)` (one batched backward pass):

.. math:: \pi_k = \{x : g(x_k) + w_k \cdot (x - x_k) = 0\}.

Each iteration projects both the iterate and the clean image onto :math:`\pi_k` intersected with
the value box :math:`[l, u]` (the minimal L-inf move, :func:`project_linf_hyperplane`):
:math:`d_k` from :math:`x_k` and :math:`d_0` from :math:`x_0`, and moves to

.. math::
    x_{k+1} = \Pi_{[l, u]}\big((1 - a)(x_k + \eta\, d_k) + a\,(x_0 + \eta\, d_0)\big), \qquad
    a = \min\Big(\frac{\|d_k\|_\infty}{\|d_k\|_\infty + \|d_0\|_\infty}, \alpha_{\max}\Big)

(:math:`a = 0` where both are 0; :math:`\eta` overshoots the linearised boundary). An iterate the
model misclassifies (as any class but :math:`y`) is recorded when it is closer to :math:`x_0`
than the best so far, and replaced by the backward step
:math:`x \leftarrow (1 - \beta)\,x_0 + \beta\,x`. The first restart starts at :math:`x_0`, later
ones at a uniform random point of the L-inf ball of radius
:math:`\min(\text{best distance}, \epsilon) / 2` around :math:`x_0` (``torch.rand`` from
``generator``, on the CPU, then moved to the images' device and dtype; clipped to the box).
Defaults (AutoAttack's "standard" FAB-T): 100 iterations, 1 restart, 9 targets,
:math:`\alpha_{\max} = 0.1`, :math:`\eta = 1.05`, :math:`\beta = 0.9`.

One departure from the paper, for ties: an iterate the model still assigns to :math:`y` with
:math:`g(x_k) = 0` exactly (tied logits, the argmax settling for :math:`y`) projects to
:math:`d_k = 0`, so :math:`a = 0` and FAB would stay there for good. Where
:math:`g(x_k) > -\delta`, :math:`\delta = 64\,\varepsilon\,(|z_t| + |z_y| + 1)` (:math:`\varepsilon`
the machine epsilon of the logits' dtype: a few dozen units in their last place), both
projections aim at the hyperplane shifted to :math:`g = \delta` instead; every other step is the
paper's. Such ties occur: pellucid's white-box MNIST networks reach exactly tied logits on FAB's
path, where FAB without the shift stalled at L-inf distance 0.9 to 1 (the cross-check,
``benchmarks/fab_crosscheck.py``).

The targets are those of ``apgd-t-native`` (:func:`pellucid.robust.apgd_attacks.target_classes`):
the ``n_target_classes`` highest non-true logits of the clean image (at most classes - 1), in
decreasing order, one FAB run each, each on the images no earlier run broke. An image is broken
when the L-inf distance of its closest adversarial is at most ``eps`` (compared exactly, no
tolerance); it then leaves the batch, as in the APGD attacks (further iterations would only
shrink a distance already within the budget, so the outputs are not minimal perturbations).

The result per image: its closest adversarial projected onto the eps-ball and the value range
(a no-op for the broken ones, up to rounding), kept when a plain forward pass gives it a lower
margin :math:`z_y - \max_{j \ne y} z_j` than the clean image, else the clean image; outputs
always lie inside the eps-ball and the value range. An image is broken exactly where that
forward pass misclassifies it: those with a closest adversarial within eps, and now and then one
whose closest adversarial lies beyond eps but is still misclassified once projected onto the
ball (counted apart in the log). Images the model already misclassifies, and every image when
``eps`` is 0, are returned unchanged without any attack step.
"""

from __future__ import annotations

import math
import sys
import time

import torch
from torch import nn
from tqdm.auto import tqdm

from pellucid._device import draw_device
from pellucid.data.validation import check_images, check_value_range
from pellucid.errors import ConfigError, InvalidInputError
from pellucid.models.inference import attack_mode, batched_logits, predict_logits
from pellucid.robust.apgd import _Batch as _State, project_linf
from pellucid.robust.apgd_attacks import _decision_margin, target_classes
from pellucid.robust.attacks import AttackRun, check_attack_inputs, check_eps, check_options, register_attack
from pellucid.robust.options import FABTargetedOptions

__all__ = ["FABTargetedOptions", "fab_t_native", "fab_targeted", "project_linf_hyperplane"]

NAME = "fab-t-native"

# the tie slack, in units of the logits' last place: an iterate closer than that to its
# linearised boundary is projected onto g = slack rather than g = 0 (see the module docstring)
_TIE = 64


# --- the projection -------------------------------------------------------------------------------

def project_linf_hyperplane(w: torch.Tensor, c: torch.Tensor, lo: torch.Tensor,
                            hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per row, the exact solution :math:`d` of

    .. math:: \min_d \|d\|_\infty \quad \text{s.t.} \quad w \cdot d = c, \quad lo \le d \le hi,

    vectorised over the batch: ``w``, ``lo``, ``hi`` ``(B, ...)`` of one shape, ``c`` ``(B,)``,
    and ``lo <= 0 <= hi`` (the point projected lies in the box; not checked). Returns
    ``(d, feasible)``, ``feasible`` ``(B,)`` bool.

    Method (sort-based, exact): with :math:`s = \mathrm{sign}(c)`, move each coordinate in the
    direction :math:`\mathrm{sign}(s\,w_i)` by at most :math:`b_i` (the room the box leaves that
    way: :math:`hi_i` or :math:`-lo_i`). The largest :math:`|w \cdot d|` reachable with
    :math:`\|d\|_\infty \le r` is :math:`F(r) = \sum_i |w_i| \min(r, b_i)`, continuous,
    non-decreasing and piecewise linear with breakpoints at the :math:`b_i`. Sorting the
    :math:`b_i` gives :math:`F` at every breakpoint from a prefix sum of :math:`|w_i| b_i` and a
    suffix sum of :math:`|w_i|`; the first breakpoint with :math:`F \ge |c|` brackets the minimal
    radius :math:`r^*`, found by solving :math:`F(r^*) = |c|` on that linear piece. Then
    :math:`d_i = \mathrm{sign}(s\,w_i) \min(r^*, b_i)`, so :math:`w \cdot d = c` and
    :math:`\|d\|_\infty = r^*` (coordinates with :math:`w_i = 0` stay 0; :math:`c = 0` gives
    :math:`d = 0`).

    Infeasible rows (:math:`|c| > F(\infty) = \sum_i |w_i| b_i`, e.g. :math:`w = 0` with
    :math:`c \ne 0`): ``feasible`` is False and ``d`` is the move of smallest norm that gets as
    close to the hyperplane as the box allows, :math:`d_i = \mathrm{sign}(s\,w_i)\,b_i`
    (:math:`w \cdot d` is :math:`s F(\infty)`, the reachable value nearest to :math:`c`). The
    test :math:`F \ge |c|` is in the inputs' dtype, so a row feasible only within rounding of
    :math:`F(\infty)` may be reported either way.
    """
    shape = w.shape
    w, lo, hi = w.flatten(1), lo.flatten(1), hi.flatten(1)
    sign = 1 - 2 * (c < 0).to(w.dtype)  # flip rows with c < 0: then c >= 0
    w, c = w * sign[:, None], c * sign
    a = w.abs()
    b = torch.where(w > 0, hi, -lo)  # room in the direction of sign(w); irrelevant where w == 0
    b_sorted, order = b.sort(1)
    a_sorted = a.gather(1, order)
    ab = a_sorted * b_sorted
    before = torch.cat([ab.new_zeros(len(ab), 1), ab.cumsum(1)[:, :-1]], 1)  # sum_{j < k} a_j b_j
    after = a_sorted.flip(1).cumsum(1).flip(1)  # sum_{j >= k} a_j
    reach = before + b_sorted * after  # F(b_k)
    k = (reach < c[:, None]).sum(1)  # the first breakpoint where F reaches c
    feasible = k < w.shape[1]
    at = k.clamp_max(w.shape[1] - 1)[:, None]
    pick = lambda t: t.gather(1, at).squeeze(1)  # noqa: E731
    radius = (c - pick(before)) / pick(after).clamp_min(torch.finfo(w.dtype).tiny)
    lower = torch.where(k > 0, b_sorted.gather(1, (at - 1).clamp_min(0)).squeeze(1), 0.0)
    radius = torch.minimum(torch.maximum(radius, lower), pick(b_sorted))  # inside its piece
    radius = torch.where(c > 0, radius, 0.0)
    radius = torch.where(feasible, radius, math.inf)
    d = w.sign() * torch.minimum(b, radius[:, None])
    return d.view(shape), feasible


# --- one target ---------------------------------------------------------------------------------

def _linf(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).abs().amax(1)


def _linearise(model: nn.Module, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor):
    """Logits, :math:`g = z_t - z_y`, :math:`\\nabla g` and the tie slack at ``x`` (one forward
    and backward pass)."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        z = model(leaf)
        z_t, z_y = z.gather(1, t[:, None]).squeeze(1), z.gather(1, y[:, None]).squeeze(1)
        g = z_t - z_y
        (w,) = torch.autograd.grad(g.sum(), leaf, allow_unused=True)
    slack = _TIE * torch.finfo(g.dtype).eps * (z_t.detach().abs() + z_y.detach().abs() + 1)
    return z.detach(), g.detach(), torch.zeros_like(leaf) if w is None else w, slack


def _fab_run(model: nn.Module, s: _State, best: torch.Tensor, best_norm: torch.Tensor, *,
             eps: float, steps: int, alpha_max: float, eta: float, beta: float,
             lo: float, hi: float, stop: bool, bar) -> None:
    """One FAB run from ``s.x``; writes closer adversarials into ``best``/``best_norm`` in place."""
    view = (-1,) + (1,) * (s.x0.dim() - 1)

    def settle(z: torch.Tensor, last: bool) -> bool:
        """Record the adversarial iterates, drop the images now within eps (``stop``), take the
        backward step on the other adversarial ones; ``False`` when no image is left."""
        adv = z.argmax(1) != s.y
        if not bool(adv.any()):
            return True
        norm = _linf(s.x - s.x0)
        better = adv & (norm < best_norm[s.ids])
        best[s.ids[better]], best_norm[s.ids[better]] = s.x[better], norm[better]
        if stop:
            open_ = best_norm[s.ids] > eps
            if not bool(open_.all()):
                s.keep(open_)
                adv = adv[open_]
        if not last and bool(adv.any()):
            back = (1 - beta) * s.x0[adv] + beta * s.x[adv]
            _, g, w, slack = _linearise(model, back, s.y[adv], s.t[adv])
            s.x[adv], s.g[adv], s.w[adv], s.slack[adv] = back, g, w, slack
        return len(s.ids) > 0

    z, s.g, s.w, s.slack = _linearise(model, s.x, s.y, s.t)
    if not settle(z, steps == 0):
        return
    for k in range(steps):
        # g(x_k) + w . (p + d - x_k) = delta  <=>  w . d = delta - g(x_k) - w . (p - x_k), for
        # p = x_k and x_0; delta = 0 unless x_k lies within the tie slack of the boundary
        c_k = torch.maximum(-s.g, s.slack)
        d_k, _ = project_linf_hyperplane(s.w, c_k, lo - s.x, hi - s.x)
        c_0 = c_k - (s.w * (s.x0 - s.x)).flatten(1).sum(1)
        d_0, _ = project_linf_hyperplane(s.w, c_0, lo - s.x0, hi - s.x0)
        n_k, n_0 = _linf(d_k), _linf(d_0)
        total = n_k + n_0
        a = torch.where(total > 0, n_k / torch.where(total > 0, total, 1.0), 0.0).clamp_max(alpha_max)
        a = a.view(view)
        s.x = ((1 - a) * (s.x + eta * d_k) + a * (s.x0 + eta * d_0)).clamp(lo, hi)
        z, s.g, s.w, s.slack = _linearise(model, s.x, s.y, s.t)
        bar.update(len(s.ids))
        if not settle(z, k == steps - 1):
            return


def fab_targeted(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor, *,
                 eps: float, steps: int = FABTargetedOptions.steps,
                 restarts: int = FABTargetedOptions.restarts,
                 alpha_max: float = FABTargetedOptions.alpha_max, eta: float = FABTargetedOptions.eta,
                 beta: float = FABTargetedOptions.beta,
                 value_range: tuple[float, float] = (0.0, 1.0),
                 generator: torch.Generator | None = None, stop_within_eps: bool = True,
                 bar=None) -> tuple[torch.Tensor, torch.Tensor]:
    """FAB for one ``target`` class per image (see the module docstring), on the whole batch at
    once; the model must be in eval mode and the inputs checked (``x`` in ``value_range``).

    Returns ``(points, norms)``: per image the adversarial of smallest L-inf distance to ``x``
    found (``x`` itself where none) and that distance (``+inf`` where none). ``restarts`` runs,
    each on the images not yet within ``eps`` (all images when ``stop_within_eps`` is False:
    then no image leaves a run early and ``norms`` are the smallest FAB reached).
    """
    lo, hi = value_range
    x = x.detach()
    best = x.clone()
    best_norm = torch.full((len(x),), math.inf, dtype=x.dtype, device=x.device)
    bar = bar if bar is not None else tqdm(disable=True)
    for r in range(restarts):
        idx = torch.nonzero(best_norm > eps if stop_within_eps else torch.ones_like(best_norm, dtype=torch.bool)
                            ).squeeze(1)
        if not len(idx):
            break
        x0 = x[idx]
        if r == 0:
            start = x0.clone()
        else:
            radius = best_norm[idx].clamp_max(eps).view(-1, *[1] * (x.dim() - 1)) / 2
            noise = torch.rand(x0.shape, generator=generator, device=draw_device(generator),
                               dtype=torch.float32).to(x.device, x.dtype)
            start = (x0 + radius * (2 * noise - 1)).clamp(lo, hi)
        state = _State(ids=idx, x0=x0, y=y[idx], t=target[idx], x=start)
        _fab_run(model, state, best, best_norm, eps=float(eps), steps=steps, alpha_max=alpha_max,
                 eta=eta, beta=beta, lo=lo, hi=hi, stop=stop_within_eps, bar=bar)
    return best, best_norm


# --- the attack ---------------------------------------------------------------------------------

def _prepare(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
             values: dict, value_range) -> torch.Tensor | None:
    """Check everything before any work; ``None`` for an empty batch, else ``y`` as int64."""
    check_eps(eps)
    check_options(NAME, FABTargetedOptions, values)
    if norm != "linf":
        raise ConfigError(f"{NAME} is an L-inf attack; got norm {norm!r} (use norm='linf', --norm linf)")
    if math.isinf(float(eps)):
        raise InvalidInputError(f"{NAME}: eps must be finite (a restart starts in the ball of radius "
                                "min(best distance, eps) / 2)")
    if isinstance(x, torch.Tensor) and x.dim() >= 2 and x.shape[0] == 0:
        return None
    check_images(x, value_range=check_value_range(value_range), name=f"{NAME}: images")
    return check_attack_inputs(model, x, y)


@register_attack(NAME, FABTargetedOptions, "targeted FAB (minimal L-inf boundary projections), "
                 "pellucid's implementation, 9 targets x 100 steps")
def fab_t_native(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                 norm: str = "linf", steps: int = FABTargetedOptions.steps,
                 restarts: int = FABTargetedOptions.restarts,
                 n_target_classes: int = FABTargetedOptions.n_target_classes,
                 alpha_max: float = FABTargetedOptions.alpha_max, eta: float = FABTargetedOptions.eta,
                 beta: float = FABTargetedOptions.beta,
                 value_range: tuple[float, float] = (0.0, 1.0),
                 generator: torch.Generator | None = None, batch_size: int = 1024,
                 progress: bool = False) -> AttackRun:
    r"""FAB-T: for the :math:`k`-th highest non-true clean logit :math:`t_k`,
    :math:`k = 1 .. \min(n, K - 1)` in turn, FAB on :math:`g = z_{t_k} - z_y` (see the module
    docstring) on the images no earlier target broke, in batches of ``batch_size``. Success is
    an adversarial (any misclassification) at L-inf distance at most ``eps``. Returns the
    adversarial inputs (inside the eps-ball and ``value_range``) and one log row: the images
    broken per target rank (closest adversarial within eps), ``broken_by_projection`` (closest
    adversarial beyond eps, but still misclassified once projected onto the ball) and the median
    L-inf distance of the broken outputs."""
    start = time.perf_counter()
    values = {"steps": steps, "restarts": restarts, "n_target_classes": n_target_classes,
              "alpha_max": alpha_max, "eta": eta, "beta": beta}
    y = _prepare(model, x, y, eps, norm, values, value_range)
    row = {"attack": NAME, "attacked": len(x), "broken_per_target": {}}
    if y is None:
        return AttackRun(x.detach().clone(), [{**row, "broken_by_projection": 0, "seconds": 0.0}])
    x, eps = x.detach(), float(eps)
    out = x.clone()
    with attack_mode(model):
        clean = predict_logits(model, x, batch_size)
        clean_margin = _decision_margin(clean, y)
        targets = target_classes(clean, y, n_target_classes)
        best = x.clone()
        best_norm = torch.full((len(x),), math.inf, dtype=x.dtype, device=x.device)
        bar = tqdm(total=steps * restarts * len(x) * targets.shape[1], desc=NAME, unit="img-step",
                   leave=False, disable=None if progress else True, file=sys.stderr)
        for rank in range(targets.shape[1] if eps > 0 else 0):
            idx = torch.nonzero((clean_margin > 0) & (best_norm > eps)).squeeze(1)
            if not len(idx):
                break
            for part in idx.split(batch_size):
                points, norms = fab_targeted(model, x[part], y[part], targets[part, rank], eps=eps,
                                             steps=steps, restarts=restarts, alpha_max=alpha_max,
                                             eta=eta, beta=beta, value_range=value_range,
                                             generator=generator, bar=bar)
                closer = norms < best_norm[part]
                best[part[closer]], best_norm[part[closer]] = points[closer], norms[closer]
            row["broken_per_target"][str(rank + 1)] = int((best_norm[idx] <= eps).sum())
        bar.close()
        # the best adversarial inside the ball and the box, kept where it lowers the margin
        found = torch.isfinite(best_norm)
        if bool(found.any()):
            idx = torch.nonzero(found).squeeze(1)
            candidate = project_linf(best[idx], x[idx], eps, value_range)
            m = _decision_margin(batched_logits(model, candidate, batch_size), y[idx])
            lower = m < clean_margin[idx]
            out[idx[lower]] = candidate[lower]
            broken = idx[lower & (m <= 0)]
        else:
            broken = torch.zeros(0, dtype=torch.long, device=x.device)
    distances = _linf(out[broken] - x[broken])  # of the outputs
    row.update(targets=int(targets.shape[1]),
               # broken, though FAB's closest adversarial lies beyond eps: its projection onto the
               # ball is still misclassified (not in broken_per_target)
               broken_by_projection=int((best_norm[broken] > eps).sum()),
               median_linf_broken=float(distances.double().median()) if len(broken) else None,
               seconds=round(time.perf_counter() - start, 2),
               # the values behind the median, so that chunks of an evaluation can be pooled
               _median_of={"median_linf_broken": distances.tolist()})
    return AttackRun(out, [row])
