"""Rejection of adversarial and unknown inputs by an epsilon neuron ("Metric as Transform", Sec. 3.2).

A model that can say "I don't know" exposes ``rejects(x) -> (B,) bool`` and an adjustable threshold
``epsilon`` / ``set_epsilon(value)`` (e.g. :class:`~pellucid.models.metric.DictionaryMLP`: it
rejects when its epsilon neuron has the largest activation, ``min_j d_j > epsilon``).

The reference protocol keeps only the *direction* of an attack: ``g = x - attack(x)`` and
``x_adv = clip(x - alpha g / ||g||_2, -b, b)`` (fixed L2 step ``alpha``, clip bound ``b``, both in
the model's internal [-1, 1] input space). Over ``count`` test images:

* ``rejected``   adversarial inputs rejected;
* ``failed``     adversarial inputs misclassified and not rejected (the attack succeeded);
* ``x_rejected`` clean inputs rejected;
* ``measure = (failed + x_rejected) / count`` -- lower is better.

``epsilon`` is searched on a grid around its trained value (coarse grid, then refinements around
the minimum), re-running the attack against the model at each candidate epsilon. The protocol's
grid is ``alpha`` in :data:`PROTOCOL_ALPHAS` and ``b`` in :data:`PROTOCOL_BOUNDS`; one search covers
all of them, attacking once per epsilon.

The softmax baseline is a plain classifier made to reject by a threshold on its largest softmax
probability (:class:`MaxProbabilityRejector`), compared at the same clean rejection rate as the
searched model (:func:`threshold_at_clean_rate`, :func:`rejection_at_clean_rates`).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from pellucid._device import draw_device
from pellucid.data.validation import check_images
from pellucid.errors import InvalidInputError
from pellucid.models.inference import attack_mode, predict_logits
from pellucid.robust.attacks import ATTACKS, run_attack

__all__ = ["MaxProbabilityRejector", "PROTOCOL_ALPHAS", "PROTOCOL_BOUNDS", "RejectionCounts", "coverage_curve",
           "rejection_at_clean_rates", "rejection_report", "rejection_counts", "rejection_search",
           "shifted_along_attack", "temporary_epsilon", "threshold_at_clean_rate"]

# The reference protocol's grid: fixed L2 steps alpha and clip bounds b (internal [-1, 1] units).
PROTOCOL_ALPHAS = (0.5, 1.0, 3.0, 9.0, 20.0)
PROTOCOL_BOUNDS = (1.0, 10.0)


def _check_rejecting(model: nn.Module) -> None:
    if not (hasattr(model, "rejects") and hasattr(model, "set_epsilon") and hasattr(model, "epsilon")):
        raise InvalidInputError(f"{type(model).__name__} cannot reject inputs: it needs rejects(x), "
                                "epsilon and set_epsilon() (train a dictionary-mlp, or wrap a classifier "
                                "in MaxProbabilityRejector)")


def _positive_grid(name: str, values: Sequence[float]) -> tuple[float, ...]:
    """``values`` as distinct floats, each finite and > 0, in the given order."""
    try:
        grid = tuple(float(v) for v in values) if not isinstance(values, (str, bytes)) else None
    except (TypeError, ValueError):
        grid = None
    if grid is None:
        raise InvalidInputError(f"{name} must be a sequence of numbers > 0, got {values!r}")
    if not grid:
        raise InvalidInputError(f"{name} must not be empty")
    bad = [v for v in grid if not (math.isfinite(v) and v > 0)]
    if bad:
        raise InvalidInputError(f"{name} must be finite numbers > 0, got {bad[0]} in {list(grid)}")
    return tuple(dict.fromkeys(grid))


def _check_attack_name(attack: str) -> None:
    # checked before any work; the registry's own error is a KeyError, not an InvalidInputError
    if not isinstance(attack, str) or attack not in ATTACKS:
        raise InvalidInputError(f"unknown attack {attack!r}; known: {', '.join(ATTACKS)}")


@contextlib.contextmanager
def temporary_epsilon(model: nn.Module) -> Iterator[float]:
    """Restore the model's epsilon on exit, whatever the search did to it."""
    _check_rejecting(model)
    saved = float(model.epsilon)
    try:
        yield saved
    finally:
        model.set_epsilon(saved)


@dataclass
class RejectionCounts:
    epsilon: float
    count: int
    rejected: int
    failed: int
    x_rejected: int

    @property
    def measure(self) -> float:
        return (self.failed + self.x_rejected) / self.count

    def summary(self) -> dict:
        return {**asdict(self), "measure": self.measure,
                "adversarial_rejection_rate": self.rejected / self.count,
                "clean_rejection_rate": self.x_rejected / self.count}


def shifted_along_attack(x: torch.Tensor, x_attacked: torch.Tensor, alpha: float, bound: float,
                         scale: float = 2.0) -> torch.Tensor:
    """``clip(x - alpha g / ||g||, -b, b)`` with ``g = x - attack(x)``, computed in the internal space
    ``u = scale x - 1`` (``scale = 2`` for images in [0, 1] that the model maps to [-1, 1])."""
    if not alpha > 0 or not bound > 0:
        raise InvalidInputError(f"alpha and bound must be > 0, got {alpha}, {bound}")
    g = (x - x_attacked) * scale  # (B, ...) in internal units
    norm = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
    u = (scale * x - 1 - alpha * g / norm).clamp(-bound, bound)
    return (u + 1) / scale


@torch.no_grad()
def rejection_counts(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor,
                     batch_size: int = 1024, *, x_rejected: int | None = None) -> RejectionCounts:
    """Counts at the model's current epsilon (see module doc); ``x_rejected``: the clean count if
    already known at this epsilon (a search reuses it across its cells)."""
    _check_rejecting(model)
    with attack_mode(model):
        if x_rejected is None:
            x_rejected = int(torch.cat([model.rejects(b) for b in x.split(batch_size)]).sum())
        rej_adv = torch.cat([model.rejects(b) for b in x_adv.split(batch_size)])
        wrong_adv = predict_logits(model, x_adv, batch_size).argmax(1) != y
    return RejectionCounts(float(model.epsilon), len(y), int(rej_adv.sum()),
                           int((wrong_adv & ~rej_adv).sum()), x_rejected)


def rejection_search(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: str = "pgd",
                     alphas: Sequence[float] = (1.0, 3.0, 9.0), bounds: Sequence[float] = (1.0,),
                     relative_grid: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.35, 1.5),
                     refinements: int = 2, refine_points: int = 5, seed: int = 0,
                     attack_kwargs: dict | None = None, min_noise_rejection: float | None = None,
                     noise_samples: int = 1000) -> dict:
    """For each clip bound ``b`` in ``bounds`` and step ``alpha`` in ``alphas``: the epsilon
    minimising ``measure`` and its counts (see module doc).

    The grid is ``relative_grid x`` the model's current epsilon; each refinement puts
    ``refine_points`` values between the neighbours of the best one. Attack directions depend on
    epsilon only, so they are cached per epsilon and shared by every ``(b, alpha)`` cell: the
    attack runs once per distinct epsilon tried (``attack_runs``), whatever the number of cells.
    The model's epsilon is restored afterwards.

    Every candidate also records the fraction of ``noise_samples`` uniform-noise images it rejects.
    ``measure`` does not count noise, so the unconstrained minimum can sit at an epsilon that lets
    noise through; with ``min_noise_rejection`` set, only candidates rejecting at least that
    fraction compete (``noise_constraint_met`` is False when none does; the best is then reported
    anyway). ``None`` is the reference protocol.

    Returns ``{"attack", "n", "bounds": {str(b): {str(alpha): row}}, "attack_runs",
    "min_noise_rejection", "seconds"}``, ``row``: :meth:`RejectionCounts.summary` at the best
    epsilon plus ``alpha``, ``bound``, ``trained_epsilon``, ``epsilons_tried``,
    ``noise_rejection_rate`` and ``noise_constraint_met`` (keys are ``str(float)``: ``"1.0"``).
    """
    alphas, bounds = _positive_grid("alphas", alphas), _positive_grid("bounds", bounds)
    if min_noise_rejection is not None and not 0 <= min_noise_rejection <= 1:
        raise InvalidInputError(f"min_noise_rejection must be in [0, 1], got {min_noise_rejection}")
    _check_attack_name(attack)
    check_images(x)
    _check_rejecting(model)
    start = time.perf_counter()
    directions: dict[float, torch.Tensor] = {}
    clean_rejected: dict[float, int] = {}  # like the directions, a function of epsilon only

    def counts_at(eps: float, alpha: float, bound: float) -> RejectionCounts:
        model.set_epsilon(eps)
        if eps not in directions:
            gen = torch.Generator().manual_seed(seed)
            directions[eps] = run_attack(attack, model, x, y, generator=gen,
                                         **(attack_kwargs or {})).adversarial
        counts = rejection_counts(model, x, y, shifted_along_attack(x, directions[eps], alpha, bound),
                                  x_rejected=clean_rejected.get(eps))
        clean_rejected[eps] = counts.x_rejected
        return counts

    noise_rate: dict[float, float] = {}

    def noise_at(eps: float) -> float:
        if eps not in noise_rate:
            model.set_epsilon(eps)
            noise_rate[eps] = _noise_rejection_rate(model, x, noise_samples, seed)
        return noise_rate[eps]

    def allowed(eps: float) -> bool:
        return min_noise_rejection is None or noise_at(eps) >= min_noise_rejection

    def search(alpha: float, bound: float, trained_eps: float) -> dict:
        grid = sorted(trained_eps * float(r) for r in relative_grid)
        evaluated: dict[float, RejectionCounts] = {}
        for level in range(refinements + 1):
            for eps in grid:
                if eps > 0 and eps not in evaluated:
                    evaluated[eps] = counts_at(eps, alpha, bound)
            ordered = sorted(evaluated)
            candidates = [e for e in ordered if allowed(e)] or ordered
            best = min(candidates, key=lambda e: evaluated[e].measure)
            i = ordered.index(best)
            lo, hi = ordered[max(i - 1, 0)], ordered[min(i + 1, len(ordered) - 1)]
            grid = torch.linspace(lo, hi, refine_points + 2)[1:-1].tolist()
        return {**evaluated[best].summary(), "alpha": alpha, "bound": bound, "trained_epsilon": trained_eps,
                "epsilons_tried": len(evaluated), "noise_rejection_rate": noise_at(best),
                "noise_constraint_met": allowed(best)}

    with temporary_epsilon(model) as trained_eps:
        results = {str(bound): {str(alpha): search(alpha, bound, trained_eps) for alpha in alphas}
                   for bound in bounds}
    return {"attack": attack, "n": len(y), "bounds": results, "attack_runs": len(directions),
            "min_noise_rejection": min_noise_rejection, "seconds": round(time.perf_counter() - start, 3)}


@torch.no_grad()
def coverage_curve(confidence: torch.Tensor, correct: torch.Tensor) -> dict[str, torch.Tensor]:
    """Selective accuracy vs coverage: keep the ``k`` most confident inputs, ``k = 1..N``.

    Returns ``coverage`` (k / N), ``selective_accuracy`` (accuracy of the kept ones) and their
    ``area`` (mean selective accuracy over coverage; 1 = perfect ranking or no errors).
    For an epsilon-neuron model use ``confidence = -min_j d_j`` (rejected first when removed).
    """
    if confidence.shape != correct.shape or confidence.dim() != 1 or confidence.numel() == 0:
        raise InvalidInputError("confidence and correct must be non-empty 1-D tensors of equal length")
    order = torch.argsort(confidence, descending=True, stable=True)
    kept_correct = correct[order].double().cumsum(0)
    k = torch.arange(1, len(order) + 1, dtype=torch.float64, device=confidence.device)
    acc = kept_correct / k
    return {"coverage": k / len(order), "selective_accuracy": acc, "area": acc.mean()}


def _uniform_noise(like: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((n, *like.shape[1:]), generator=gen, dtype=like.dtype, device=draw_device(gen)).to(like.device)


@torch.no_grad()
def _noise_rejection_rate(model: nn.Module, like: torch.Tensor, n: int, seed: int) -> float:
    with attack_mode(model):
        return float(model.rejects(_uniform_noise(like, n, seed)).float().mean())


@torch.no_grad()
def _confidence(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """``(B,)``: the model's ``confidence(x)`` if it has one (rejected below a threshold), else
    ``-min_j d_j`` (an epsilon-neuron model rejects above a distance threshold)."""
    with attack_mode(model):
        if hasattr(model, "confidence"):
            return torch.cat([model.confidence(b) for b in x.split(batch_size)])
        return torch.cat([-model.distances(b).min(1).values for b in x.split(batch_size)])


def rejection_report(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: str = "pgd",
                     alphas: Sequence[float] = (1.0, 3.0, 9.0), bounds: Sequence[float] = (1.0,),
                     seed: int = 0, attack_kwargs: dict | None = None, noise_samples: int = 1000,
                     min_noise_rejection: float | None = None) -> dict:
    """What ``pellucid evaluate DIR --rejection`` prints: clean and uniform-noise rejection rates at
    the trained epsilon, the selective-accuracy-vs-coverage area, and :func:`rejection_search`."""
    check_images(x)
    _check_rejecting(model)
    with attack_mode(model), torch.no_grad():
        rejected = torch.cat([model.rejects(b) for b in x.split(1024)])
        correct = predict_logits(model, x, 1024).argmax(1) == y
    curve = coverage_curve(_confidence(model, x), correct)
    kept = ~rejected
    return {"trained_epsilon": float(model.epsilon),
            "clean_rejection_rate": float(rejected.float().mean()),
            "accuracy_on_accepted": float(correct[kept].float().mean()) if bool(kept.any()) else None,
            "noise_rejection_rate": _noise_rejection_rate(model, x, noise_samples, seed),
            "selective_accuracy_area": float(curve["area"]),
            "search": rejection_search(model, x, y, attack=attack, alphas=alphas, bounds=bounds,
                                       seed=seed, attack_kwargs=attack_kwargs, noise_samples=noise_samples,
                                       min_noise_rejection=min_noise_rejection)}


# -- softmax baseline -------------------------------------------------------------------------------

class MaxProbabilityRejector(nn.Module):
    r"""A softmax classifier that rejects: ``rejects(x)`` is :math:`\max_k \mathrm{softmax}(f(x))_k < \tau`.

    ``epsilon`` / ``set_epsilon`` read and set ``tau``, so the rejection protocol
    (:func:`rejection_counts`, :func:`temporary_epsilon`, ...) treats it like an epsilon-neuron
    model; unlike one, its logits (``forward``: the classifier's) do not depend on the threshold, so
    an attack on it does not either. ``tau <= 0`` rejects nothing, ``tau > 1`` (e.g. ``inf``)
    everything.
    """

    def __init__(self, classifier: nn.Module, tau: float = 0.5) -> None:
        super().__init__()
        self.classifier = classifier
        self.set_epsilon(tau)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)

    @torch.no_grad()
    def confidence(self, x: torch.Tensor) -> torch.Tensor:
        r"""``(B,)``: the largest softmax probability, :math:`\max_k \mathrm{softmax}(f(x))_k`."""
        return torch.softmax(self.classifier(x), dim=1).amax(1)

    @torch.no_grad()
    def rejects(self, x: torch.Tensor) -> torch.Tensor:
        """``(B,)`` bool: ``confidence(x) < tau``."""
        return self.confidence(x) < self.tau

    @property
    def epsilon(self) -> float:
        return self.tau

    def set_epsilon(self, tau: float) -> None:
        try:
            tau = float(tau)
        except (TypeError, ValueError, RuntimeError):
            tau = math.nan
        if math.isnan(tau):
            raise InvalidInputError("the rejection threshold tau must be a number (max softmax probability)")
        self.tau = tau


def threshold_at_clean_rate(confidence: torch.Tensor, rate: float) -> float:
    """The threshold ``tau`` at which ``confidence < tau`` holds for a fraction ``rate`` of the inputs.

    ``k = round(rate N)`` inputs are rejected: ``tau`` is the ``(k + 1)``-th smallest confidence (an
    empirical quantile) or, for ``k = N``, the next representable value above the largest (finite,
    so it can be written as JSON). That is the largest such candidate rejecting at most ``k``:
    exactly ``k`` without ties, fewer when ties straddle the ``k``-th smallest.
    """
    if not isinstance(confidence, torch.Tensor) or confidence.dim() != 1 or confidence.numel() == 0:
        raise InvalidInputError("confidence must be a non-empty 1-D tensor")
    if not bool(torch.isfinite(confidence).all()):
        raise InvalidInputError("confidence contains NaN or inf")
    try:
        rate = float(rate)
    except (TypeError, ValueError):
        rate = math.nan
    if not 0 <= rate <= 1:
        raise InvalidInputError(f"rate must be in [0, 1], got {rate}")
    c = confidence.detach().cpu()
    k = round(rate * len(c))
    if k >= len(c):  # in c's dtype: every value is below it
        return float(torch.nextafter(c.max(), c.new_tensor(math.inf)))
    return float(torch.kthvalue(c, k + 1).values)


def rejection_at_clean_rates(model: nn.Module, x: torch.Tensor, y: torch.Tensor, reference: dict, *,
                             attack_kwargs: dict | None = None, seed: int = 0,
                             attacked: torch.Tensor | None = None, noise_samples: int = 1000) -> dict:
    """A thresholded classifier (e.g. :class:`MaxProbabilityRejector`) at the clean rejection rates
    of another model's search: the baseline "at the same clean rejection rate".

    For every ``(b, alpha)`` cell of ``reference`` (a :func:`rejection_search` result on the same
    ``x``, ``y``): ``tau`` = :func:`threshold_at_clean_rate` of the clean confidences at that cell's
    ``clean_rejection_rate``, and the counts at ``tau`` of ``clip(x - alpha g / ||g||, -b, b)``.
    ``g = x - attack(x)`` comes from ``reference["attack"]`` run once with ``attack_kwargs`` (the
    model's logits must not depend on its threshold), or from ``attacked`` (``attack(x)``, computed
    beforehand: e.g. shared by the references of several models). The threshold is restored.

    Returns ``{"attack", "n", "bounds": {str(b): {str(alpha): row}}, "seconds"}``, ``row``:
    :meth:`RejectionCounts.summary` (``epsilon`` = ``tau``) plus ``alpha``, ``bound``, ``tau``,
    ``target_clean_rejection_rate`` and ``noise_rejection_rate`` (of ``noise_samples`` uniform images).
    """
    check_images(x)
    _check_rejecting(model)
    if not isinstance(reference, dict) or not isinstance(reference.get("bounds"), dict) or "attack" not in reference:
        raise InvalidInputError("reference must be a rejection_search result (with 'attack' and 'bounds')")
    if reference.get("n") != len(y):
        raise InvalidInputError(f"reference was searched on {reference.get('n')} images, got {len(y)}: "
                                "use the same test images")
    _check_attack_name(reference["attack"])
    start = time.perf_counter()
    if attacked is None:
        attacked = run_attack(reference["attack"], model, x, y, generator=torch.Generator().manual_seed(seed),
                              **(attack_kwargs or {})).adversarial
    elif attacked.shape != x.shape:
        raise InvalidInputError(f"attacked must have the shape of x {tuple(x.shape)}, got {tuple(attacked.shape)}")
    clean = _confidence(model, x)
    noise = _confidence(model, _uniform_noise(x, noise_samples, seed))
    results: dict[str, dict[str, Any]] = {}
    with temporary_epsilon(model):
        for b, cells in reference["bounds"].items():
            results[b] = {}
            for a, cell in cells.items():
                rate = cell["clean_rejection_rate"]
                tau = threshold_at_clean_rate(clean, rate)
                model.set_epsilon(tau)
                counts = rejection_counts(model, x, y, shifted_along_attack(x, attacked, float(a), float(b)))
                results[b][a] = {**counts.summary(), "alpha": float(a), "bound": float(b), "tau": tau,
                                 "target_clean_rejection_rate": rate,
                                 "noise_rejection_rate": float((noise < tau).float().mean())}
    return {"attack": reference["attack"], "n": len(y), "bounds": results,
            "seconds": round(time.perf_counter() - start, 3)}
