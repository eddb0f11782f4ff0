"""Deletion and insertion curves (Petsiuk et al. 2018, RISE; the pixel flipping of Bach et al.
2015 and Samek et al. 2017): the score as features are removed from, or restored into, the input
in attribution order, and the area under that curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from pellucid.explain._metrics._core import (Baseline, Scorer, Seed, UnknownOptionError,
                                             baseline_draws, check_batch, check_count, make_generator,
                                             register, result_dtype, stat_dtype)
from pellucid.explain._metrics.faithfulness import feature_groups
from pellucid.explain.targets import Target

__all__ = ["PerturbationCurve", "deletion", "insertion"]

ORDERS = {"morf": True, "lerf": False}  # most / least relevant first -> descending sort


@dataclass(frozen=True)
class PerturbationCurve:
    """``auc (B,)``: the trapezoid area under ``curve (B, T + 1)``, the score after step ``t``,
    plotted against ``fractions (T + 1,)``, the share of features changed (0 to 1)."""

    auc: torch.Tensor
    curve: torch.Tensor
    fractions: torch.Tensor


def _curve(model: nn.Module, inputs: torch.Tensor, attributions: torch.Tensor, target: Target, *,
           insert: bool, order: str, features_in_step: int, baseline: Baseline, seed: Seed,
           batch_size: int, softmax: bool) -> PerturbationCurve:
    check_batch(inputs, attributions)
    if order not in ORDERS:
        raise UnknownOptionError(f"unknown order {order!r}; known: {', '.join(ORDERS)}")
    step = check_count(features_in_step, "features_in_step")
    features = inputs[0].numel()
    n_steps = math.ceil(features / step)
    ranks = feature_groups(attributions, 1, descending=ORDERS[order])  # (B, D): 0 = first changed
    base = baseline_draws(baseline, inputs, 1, make_generator(seed, inputs.device))
    scorer = Scorer(model, inputs, target, batch_size, softmax)
    x = inputs.flatten(1)

    def build(lo: int, hi: int) -> torch.Tensor:
        changed = torch.arange(lo, hi, device=x.device).view(-1, 1, 1) * step
        mask = ranks.unsqueeze(0) < changed  # (m, B, D): the first t * k features in order
        return torch.where(mask, x, base) if insert else torch.where(mask, base, x)

    curve = scorer.copies(build, n_steps + 1).T.to(stat_dtype(x.device))  # (B, T + 1)
    counts = (torch.arange(n_steps + 1, device=x.device) * step).clamp(max=features)
    fractions = counts.to(curve.dtype) / features
    auc = torch.trapezoid(curve, fractions, dim=1)
    dtype = result_dtype(inputs)
    return PerturbationCurve(auc.to(dtype), curve.to(dtype), fractions.to(dtype))


@register("deletion",
          "score while features are removed in attribution order, and its AUC (Petsiuk et al. 2018)",
          higher_is_better=False)
def deletion(model: nn.Module, inputs: torch.Tensor, attributions: torch.Tensor, target: Target = None,
             *, order: str = "morf", features_in_step: int = 1, baseline: Baseline = 0.0,
             seed: Seed = 0, batch_size: int = 256, softmax: bool = False) -> PerturbationCurve:
    """Deletion curve: ``c_t = f(x_[R_t <- b])`` for ``t = 0..ceil(D / k)``, where ``R_t`` holds
    the first ``t k`` features (``k = features_in_step``) in ``order``: ``"morf"`` (most relevant
    first, Quantus' ``PixelFlipping``) or ``"lerf"`` (least relevant first). Replacements
    accumulate; ``c_0 = f(x)``. ``auc = int_0^1 c d(fraction)`` (trapezoid); lower is better for
    MoRF (higher for LeRF).
    """
    return _curve(model, inputs, attributions, target, insert=False, order=order,
                  features_in_step=features_in_step, baseline=baseline, seed=seed,
                  batch_size=batch_size, softmax=softmax)


@register("insertion",
          "score while features are restored into a baseline in attribution order, and its AUC "
          "(Petsiuk et al. 2018)",
          higher_is_better=True)
def insertion(model: nn.Module, inputs: torch.Tensor, attributions: torch.Tensor, target: Target = None,
              *, order: str = "morf", features_in_step: int = 1, baseline: Baseline = 0.0,
              seed: Seed = 0, batch_size: int = 256, softmax: bool = False) -> PerturbationCurve:
    """Insertion curve: start from the baseline and restore the first ``t k`` features of ``x`` in
    ``order``: ``c_t = f(b_[R_t <- x])``, ``c_0 = f(b)``, ``c_T = f(x)``. ``auc`` as for
    :func:`deletion`; higher is better for MoRF.
    """
    return _curve(model, inputs, attributions, target, insert=True, order=order,
                  features_in_step=features_in_step, baseline=baseline, seed=seed,
                  batch_size=batch_size, softmax=softmax)
