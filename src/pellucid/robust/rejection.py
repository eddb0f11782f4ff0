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
the minimum), re-running the attack against the model at each candidate epsilon.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from pellucid.data.validation import check_images
from pellucid.errors import InvalidInputError
from pellucid.models.inference import eval_mode, predict_logits
from pellucid.robust.attacks import run_attack

__all__ = ["RejectionCounts", "coverage_curve", "rejection_report", "rejection_counts", "rejection_search",
           "shifted_along_attack", "temporary_epsilon"]


def _check_rejecting(model: nn.Module) -> None:
    if not (hasattr(model, "rejects") and hasattr(model, "set_epsilon") and hasattr(model, "epsilon")):
        raise InvalidInputError(f"{type(model).__name__} cannot reject inputs: it needs rejects(x), "
                                "epsilon and set_epsilon() (train a dictionary-mlp)")


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
                     batch_size: int = 1024) -> RejectionCounts:
    """Counts at the model's current epsilon (see module doc)."""
    _check_rejecting(model)
    with eval_mode(model):
        rej_clean = torch.cat([model.rejects(b) for b in x.split(batch_size)])
        rej_adv = torch.cat([model.rejects(b) for b in x_adv.split(batch_size)])
        wrong_adv = predict_logits(model, x_adv, batch_size).argmax(1) != y
    return RejectionCounts(float(model.epsilon), len(y), int(rej_adv.sum()),
                           int((wrong_adv & ~rej_adv).sum()), int(rej_clean.sum()))


def rejection_search(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: str = "pgd",
                     alphas: Sequence[float] = (1.0, 3.0, 9.0), bound: float = 1.0,
                     relative_grid: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.35, 1.5),
                     refinements: int = 2, refine_points: int = 5, seed: int = 0,
                     attack_kwargs: dict | None = None, min_noise_rejection: float | None = None,
                     noise_samples: int = 1000) -> dict:
    """For each ``alpha``: the epsilon minimising ``measure`` and its counts (see module doc).

    The grid is ``relative_grid x`` the model's current epsilon; each refinement puts
    ``refine_points`` values between the neighbours of the best one. Attack directions are cached
    per epsilon and shared by all ``alphas``. The model's epsilon is restored afterwards.

    Every candidate also records the fraction of ``noise_samples`` uniform-noise images it rejects.
    ``measure`` does not count noise, so the unconstrained minimum can sit at an epsilon that lets
    noise through; with ``min_noise_rejection`` set, only candidates rejecting at least that
    fraction compete (``noise_constraint_met`` is False when none does; the best is then reported
    anyway). ``None`` is the reference protocol.
    """
    if min_noise_rejection is not None and not 0 <= min_noise_rejection <= 1:
        raise InvalidInputError(f"min_noise_rejection must be in [0, 1], got {min_noise_rejection}")
    check_images(x)
    _check_rejecting(model)
    start = time.perf_counter()
    directions: dict[float, torch.Tensor] = {}

    def counts_at(eps: float, alpha: float) -> RejectionCounts:
        model.set_epsilon(eps)
        if eps not in directions:
            gen = torch.Generator().manual_seed(seed)
            directions[eps] = run_attack(attack, model, x, y, generator=gen,
                                         **(attack_kwargs or {})).adversarial
        return rejection_counts(model, x, y, shifted_along_attack(x, directions[eps], alpha, bound))

    noise_rate: dict[float, float] = {}

    def noise_at(eps: float) -> float:
        if eps not in noise_rate:
            model.set_epsilon(eps)
            noise_rate[eps] = _noise_rejection_rate(model, x, noise_samples, seed)
        return noise_rate[eps]

    def allowed(eps: float) -> bool:
        return min_noise_rejection is None or noise_at(eps) >= min_noise_rejection

    results = {}
    with temporary_epsilon(model) as trained_eps:
        for alpha in alphas:
            grid = sorted(trained_eps * float(r) for r in relative_grid)
            evaluated: dict[float, RejectionCounts] = {}
            for level in range(refinements + 1):
                for eps in grid:
                    if eps > 0 and eps not in evaluated:
                        evaluated[eps] = counts_at(eps, alpha)
                ordered = sorted(evaluated)
                candidates = [e for e in ordered if allowed(e)] or ordered
                best = min(candidates, key=lambda e: evaluated[e].measure)
                i = ordered.index(best)
                lo, hi = ordered[max(i - 1, 0)], ordered[min(i + 1, len(ordered) - 1)]
                grid = torch.linspace(lo, hi, refine_points + 2)[1:-1].tolist()
            results[str(alpha)] = {**evaluated[best].summary(), "trained_epsilon": trained_eps,
                                   "epsilons_tried": len(evaluated),
                                   "noise_rejection_rate": noise_at(best),
                                   "noise_constraint_met": allowed(best)}
    return {"attack": attack, "bound": bound, "n": len(y), "alphas": results,
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
    k = torch.arange(1, len(order) + 1, dtype=torch.float64)
    acc = kept_correct / k
    return {"coverage": k / len(order), "selective_accuracy": acc, "area": acc.mean()}


@torch.no_grad()
def _noise_rejection_rate(model: nn.Module, like: torch.Tensor, n: int, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand((n, *like.shape[1:]), generator=gen, dtype=like.dtype).to(like.device)
    with eval_mode(model):
        return float(model.rejects(noise).float().mean())


def rejection_report(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: str = "pgd",
                     alphas: Sequence[float] = (1.0, 3.0, 9.0), bound: float = 1.0, seed: int = 0,
                     attack_kwargs: dict | None = None, noise_samples: int = 1000,
                     min_noise_rejection: float | None = None) -> dict:
    """What ``pellucid evaluate DIR --rejection`` prints: clean and uniform-noise rejection rates at
    the trained epsilon, the selective-accuracy-vs-coverage area, and :func:`rejection_search`."""
    check_images(x)
    _check_rejecting(model)
    with eval_mode(model), torch.no_grad():
        rejected = torch.cat([model.rejects(b) for b in x.split(1024)])
        correct = predict_logits(model, x, 1024).argmax(1) == y
        min_d = torch.cat([model.distances(b).min(1).values for b in x.split(1024)])
    curve = coverage_curve(-min_d, correct)
    kept = ~rejected
    return {"trained_epsilon": float(model.epsilon),
            "clean_rejection_rate": float(rejected.float().mean()),
            "accuracy_on_accepted": float(correct[kept].float().mean()) if bool(kept.any()) else None,
            "noise_rejection_rate": _noise_rejection_rate(model, x, noise_samples, seed),
            "selective_accuracy_area": float(curve["area"]),
            "search": rejection_search(model, x, y, attack=attack, alphas=alphas, bound=bound,
                                       seed=seed, attack_kwargs=attack_kwargs, noise_samples=noise_samples,
                                       min_noise_rejection=min_noise_rejection)}
