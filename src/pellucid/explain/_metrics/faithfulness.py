"""Faithfulness: does removing what the attribution calls important change the prediction?

Notation: ``x`` one input with ``D`` features, ``a`` its attribution, ``f(x)`` the explained score
(the target logit, or its probability with ``softmax=True``), ``x_[S <- b]`` the input with the
features in ``S`` replaced by the baseline ``b``. All draws come from ``seed`` (an int or a
``torch.Generator``); passing the same seed gives two explainers the same draws.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pellucid.errors import InvalidInputError
from pellucid.explain._metrics._core import (Baseline, Scorer, Seed, baseline_draws, check_batch,
                                             check_count, check_draws, check_positive, make_generator,
                                             clip_to_range, randn, random_subsets, register,
                                             result_dtype, stat_dtype, take_draws)
from pellucid.explain._metrics.stats import pearson, spearman
from pellucid.explain.targets import Target

__all__ = ["faithfulness_correlation", "faithfulness_estimate", "feature_groups", "infidelity",
           "monotonicity_correlation"]


def feature_groups(attributions: torch.Tensor, size: int, descending: bool) -> torch.Tensor:
    """``(B, D)`` group index of each feature: the features sorted by attribution (stable sort), cut
    into consecutive groups of ``size`` (group 0 holds the largest, or smallest, attributions)."""
    flat = attributions.flatten(1)
    order = flat.argsort(dim=1, descending=descending, stable=True)  # (B, D)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)  # rank[b, order[b, r]] = r
    return rank // size


def _group_sums(attributions: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """``(B, J)``: the attribution summed over each group."""
    flat = attributions.flatten(1).to(stat_dtype(attributions.device))
    return flat.new_zeros(len(flat), n_groups).scatter_add_(1, groups, flat)


def _n_groups(features: int, size: int, metric: str) -> int:
    n = math.ceil(features / check_count(size, "features_in_step"))
    if n < 2:
        raise InvalidInputError(f"{metric} correlates over feature groups but the inputs' {features} "
                                f"features form {n} group of {size}; use a smaller features_in_step")
    return n


# --------------------------------------------------------------------------- infidelity

@register("infidelity",
          "optimally scaled E[(beta <I, a> - (f(x) - f(x - I)))^2], Gaussian I (Yeh et al. 2019)",
          higher_is_better=False)
def infidelity(model: nn.Module, inputs: torch.Tensor, attributions: torch.Tensor,
               target: Target = None, *, n_perturbations: int = 50, noise_std: float = 0.1,
               perturbations: torch.Tensor | None = None, optimal_scaling: bool = True, seed: Seed = 0,
               batch_size: int = 256, softmax: bool = False,
               value_range: tuple[float, float] | None = None) -> torch.Tensor:
    """Infidelity (Yeh et al. 2019, "On the (In)fidelity and Sensitivity of Explanations"), ``(B,)``.

    For perturbations ``I_k ~ N(0, noise_std^2 Id)``, ``k = 1..n`` (or the given ``perturbations``,
    shape ``(n, *inputs.shape)``), with ``p_k = <I_k, a>`` and ``d_k = f(x) - f(x - I_k)``::

        INFD      = 1/n sum_k (beta* p_k - d_k)^2,   beta* = sum_k p_k d_k / sum_k p_k^2
        INFD_raw  = 1/n sum_k (p_k - d_k)^2                       (optimal_scaling=False)

    ``beta*`` minimises the error over all rescalings of ``a``, so the optimally scaled infidelity
    is invariant to ``a -> c a`` (any ``c != 0``); it equals Captum's
    ``infidelity(normalize=True)``. Zero attributions score ``1/n sum_k d_k^2``. Quantus'
    ``Infidelity`` (black patches removed one after another, no scaling) is this metric with
    ``perturbations = x - x_k`` and ``optimal_scaling=False``. The noise is drawn up front
    (``n`` times the inputs' memory). Lower is better.

    ``value_range=(lo, hi)``: the perturbed inputs are clipped to it, ``x - I_k -> clip(x - I_k)``,
    and ``I_k`` becomes the perturbation actually applied, ``x - clip(x - I_k)`` (for models that
    refuse inputs outside their domain, e.g. images in [0, 1]).
    """
    check_batch(inputs, attributions)
    scorer = Scorer(model, inputs, target, batch_size, softmax)
    if perturbations is None:
        n = check_count(n_perturbations, "n_perturbations")
        std = check_positive(noise_std, "noise_std")
        noise = std * randn((n, *inputs.shape), make_generator(seed, inputs.device), inputs)
    else:
        noise = check_draws(perturbations, tuple(inputs.shape), "perturbations", inputs)
    if value_range is not None:
        noise = inputs - clip_to_range(inputs - noise, value_range)  # the perturbation applied
    drops = scorer.clean - scorer.copies(lambda lo, hi: inputs - noise[lo:hi], len(noise))  # (n, B)
    dots = torch.einsum("nbd,bd->nb", noise.flatten(2), attributions.flatten(1))  # (n, B)
    return _infidelity(dots, drops, optimal_scaling).to(result_dtype(inputs))


def _infidelity(dots: torch.Tensor, drops: torch.Tensor, optimal_scaling: bool) -> torch.Tensor:
    dots, drops = dots.to(stat_dtype(dots.device)), drops.to(stat_dtype(dots.device))
    if optimal_scaling:
        energy = (dots * dots).sum(0)
        beta = (dots * drops).sum(0) / energy.clamp_min(torch.finfo(energy.dtype).tiny)
        dots = torch.where(energy > 0, beta, 0.0) * dots
    return ((dots - drops) ** 2).mean(0)


# --------------------------------------------------------------------------- faithfulness correlation

@register("faithfulness_correlation",
          "Pearson(sum of a over random subsets, score drop when they are removed) (Bhatt et al. "
          "2020)",
          higher_is_better=True)
def faithfulness_correlation(model: nn.Module, inputs: torch.Tensor, attributions: torch.Tensor,
                             target: Target = None, *, subset_size: int = 224, n_draws: int = 100,
                             baseline: Baseline = 0.0, subsets: torch.Tensor | None = None,
                             seed: Seed = 0, batch_size: int = 256, softmax: bool = False
                             ) -> torch.Tensor:
    """Faithfulness correlation (Bhatt et al. 2020, "Evaluating and Aggregating Feature-based Model
    Explanations"), ``(B,)`` in ``[-1, 1]``::

        mu_F = corr_{S_k} ( sum_{i in S_k} a_i ,  f(x) - f(x_[S_k <- b]) ),   k = 1..n

    Pearson correlation over ``n`` subsets ``S_k`` of ``subset_size`` features drawn uniformly
    without replacement (or the given ``subsets``, int ``(n, B, subset_size)``). ``baseline``: a
    number, ``"black"``/``"white"``/``"mean"``, ``"uniform"`` (fresh per draw) or a tensor (see
    :func:`~pellucid.explain.metrics.baseline_draws`). Higher is better; NaN where a row is constant.
    """
    check_batch(inputs, attributions)
    batch, features = len(inputs), inputs[0].numel()
    gen = make_generator(seed, inputs.device)
    if subsets is None:
        n = check_count(n_draws, "n_draws", 2)
        size = check_count(subset_size, "subset_size")
        if size > features:
            raise InvalidInputError(f"subset_size {size} exceeds the {features} features per input")
        subsets = random_subsets(n, batch, features, size, gen, inputs.device)
    subsets = _check_subsets(subsets, batch, features).to(inputs.device)
    base = baseline_draws(baseline, inputs, len(subsets), gen)
    scorer = Scorer(model, inputs, target, batch_size, softmax)
    x = inputs.flatten(1)

    def build(lo: int, hi: int) -> torch.Tensor:
        mask = torch.zeros((hi - lo, batch, features), dtype=torch.bool, device=x.device)
        mask.scatter_(2, subsets[lo:hi], True)
        return torch.where(mask, take_draws(base, slice(lo, hi)), x)  # (m, B, D)

    drops = scorer.clean - scorer.copies(build, len(subsets))  # (n, B)
    a = attributions.flatten(1).to(stat_dtype(x.device))
    sums = a.unsqueeze(0).expand(len(subsets), -1, -1).gather(2, subsets).sum(2)  # (n, B)
    return pearson(sums.T, drops.T).to(result_dtype(inputs))


def _check_subsets(subsets: torch.Tensor, batch: int, features: int) -> torch.Tensor:
    if not isinstance(subsets, torch.Tensor) or subsets.is_floating_point() \
            or subsets.dtype == torch.bool:
        raise InvalidInputError("subsets must be an integer tensor of feature indices (n, B, size)")
    if subsets.dim() != 3 or subsets.shape[1] != batch or subsets.shape[2] < 1:
        raise InvalidInputError(f"subsets must have shape (n, {batch}, size), got "
                                f"{tuple(subsets.shape)}")
    if subsets.shape[0] < 2:
        raise InvalidInputError("faithfulness_correlation needs at least 2 subsets to correlate over")
    if bool(((subsets < 0) | (subsets >= features)).any()):
        raise InvalidInputError(f"subsets hold indices outside 0..{features - 1}")
    return subsets.long()


# --------------------------------------------------------------------------- faithfulness estimate

@register("faithfulness_estimate",
          "Pearson(attribution of each feature group, score drop when it is removed) (Alvarez-Melis"
          " & Jaakkola 2018)",
          higher_is_better=True)
def faithfulness_estimate(model: nn.Module, inputs: torch.Tensor, attributions: torch.Tensor,
                          target: Target = None, *, features_in_step: int = 1,
                          baseline: Baseline = 0.0, seed: Seed = 0, batch_size: int = 256,
                          softmax: bool = False) -> torch.Tensor:
    """Faithfulness estimate (Alvarez-Melis & Jaakkola 2018, "Towards Robust Interpretability with
    Self-Explaining Neural Networks"), ``(B,)`` in ``[-1, 1]``::

        corr_j ( sum_{i in G_j} a_i ,  f(x) - f(x_[G_j <- b]) ),   j = 1..ceil(D / k)

    ``G_j``: the ``j``-th group of ``k = features_in_step`` features in descending attribution
    order; each group is removed on its own (not cumulatively). Pearson correlation; higher is
    better.
    """
    check_batch(inputs, attributions)
    n_groups = _n_groups(inputs[0].numel(), features_in_step, "faithfulness_estimate")
    groups = feature_groups(attributions, features_in_step, descending=True)  # (B, D)
    base = baseline_draws(baseline, inputs, 1, make_generator(seed, inputs.device))
    scorer = Scorer(model, inputs, target, batch_size, softmax)
    x = inputs.flatten(1)

    def build(lo: int, hi: int) -> torch.Tensor:
        js = torch.arange(lo, hi, device=x.device).view(-1, 1, 1)
        return torch.where(groups.unsqueeze(0) == js, base, x)  # (m, B, D)

    drops = scorer.clean - scorer.copies(build, n_groups)  # (J, B)
    sums = _group_sums(attributions, groups, n_groups)  # (B, J)
    return pearson(sums, drops.T).to(result_dtype(inputs))


# --------------------------------------------------------------------------- monotonicity correlation

@register("monotonicity_correlation",
          "Spearman(attribution of each group, E[score change^2] when it is perturbed) (Nguyen & "
          "Martinez 2020)",
          higher_is_better=True)
def monotonicity_correlation(model: nn.Module, inputs: torch.Tensor, attributions: torch.Tensor,
                             target: Target = None, *, n_samples: int = 100, features_in_step: int = 1,
                             baseline: Baseline = "uniform", seed: Seed = 0, batch_size: int = 256,
                             softmax: bool = False) -> torch.Tensor:
    """Monotonicity correlation (Nguyen & Martinez 2020, "On Quantitative Aspects of Model
    Interpretability"), ``(B,)`` in ``[-1, 1]``::

        v_j = 1/S sum_s ( f(x) - f(x_[G_j <- b_s]) )^2
        rho = spearman_j ( sum_{i in G_j} a_i , v_j )

    ``G_j``: groups of ``k = features_in_step`` features in ascending attribution order; ``b_s``,
    ``s = 1..n_samples``: baseline draws (default ``U[0, 1)`` per element; a deterministic baseline
    gives one draw; a tensor ``(n_samples, *inputs.shape)`` gives explicit draws). The paper scores
    ``|a|``: pass ``attributions.abs()`` for its setting. Quantus' ``MonotonicityCorrelation``
    (whose ``"uniform"`` baseline is one value per group and draw, and whose default is
    ``softmax=True``) also divides ``v_j`` by ``f(x)^2``, which leaves the rank correlation
    unchanged. Higher is better.
    """
    check_batch(inputs, attributions)
    n_groups = _n_groups(inputs[0].numel(), features_in_step, "monotonicity_correlation")
    draws = check_count(n_samples, "n_samples")
    groups = feature_groups(attributions, features_in_step, descending=False)  # (B, D)
    base = baseline_draws(baseline, inputs, draws, make_generator(seed, inputs.device))  # (S, B|1, D|1)
    n_draws = base.shape[0]
    scorer = Scorer(model, inputs, target, batch_size, softmax)
    x = inputs.flatten(1)

    def build(lo: int, hi: int) -> torch.Tensor:
        copy = torch.arange(lo, hi, device=x.device)  # copy c = j * S + s
        group, draw = (copy // n_draws).view(-1, 1, 1), copy % n_draws
        return torch.where(groups.unsqueeze(0) == group, take_draws(base, draw), x)  # (m, B, D)

    drops = scorer.clean - scorer.copies(build, n_groups * n_draws)  # (J * S, B)
    variation = drops.to(stat_dtype(x.device)).pow(2).view(n_groups, n_draws, -1).mean(1)  # (J, B)
    sums = _group_sums(attributions, groups, n_groups)  # (B, J)
    return spearman(sums, variation.T).to(result_dtype(inputs))
