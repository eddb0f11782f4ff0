"""Robustness: how much does the explanation move when the input barely does?"""

from __future__ import annotations

import torch
from torch import nn

from pellucid.explain._metrics._core import (ExplainFn, Scorer, Seed, check_batch, check_count, clip_to_range,
                                             check_draws, check_positive, chunks, explain_fn,
                                             explain_rows, make_generator, rand, register,
                                             result_dtype, stat_dtype)
from pellucid.explain.base import Explainer
from pellucid.explain.targets import Target

__all__ = ["max_sensitivity"]


@register("max_sensitivity",
          "max relative change of the explanation under uniform input noise (Yeh et al. 2019)",
          higher_is_better=False)
def max_sensitivity(model: nn.Module, inputs: torch.Tensor, attributions: torch.Tensor,
                    target: Target = None, *, explainer: str | Explainer | ExplainFn = "gradient",
                    explainer_options: dict | None = None, radius: float = 0.2, n_draws: int = 10,
                    perturbations: torch.Tensor | None = None, seed: Seed = 0,
                    batch_size: int = 256,
                    value_range: tuple[float, float] | None = None) -> torch.Tensor:
    """Max-sensitivity (Yeh et al. 2019, "On the (In)fidelity and Sensitivity of Explanations"),
    ``(B,)``::

        SENS_max = max_k || Phi(x + d_k) - Phi(x) ||_2 / || Phi(x) ||_2,   d_k ~ U[-r, r]^D

    ``Phi(x)``: the given ``attributions``; ``Phi(x + d_k)``: the ``explainer`` (a registered name
    built with ``explainer_options``, an :class:`Explainer` or ``f(model, inputs, target)``) on
    ``n_draws`` noisy copies (or the given ``perturbations``, shape ``(n, *inputs.shape)``), for
    the target resolved on ``x``. Quantus' ``MaxSensitivity`` with its defaults (Frobenius norms,
    ``lower_bound=r``). ``value_range=(lo, hi)``: the noisy copies are clipped to it (for models
    that refuse inputs outside their domain, e.g. images in [0, 1]). Lower is better; inf where
    ``Phi(x) = 0``.
    """
    check_batch(inputs, attributions)
    scorer = Scorer(model, inputs, target, batch_size)
    if perturbations is None:
        n, r = check_count(n_draws, "n_draws"), check_positive(radius, "radius")
        noise = r * (2 * rand((n, *inputs.shape), make_generator(seed, inputs.device), inputs) - 1)
    else:
        noise = check_draws(perturbations, tuple(inputs.shape), "perturbations", inputs)
    explain = explain_fn(explainer, explainer_options)
    a = attributions.flatten(1).to(stat_dtype(inputs.device))  # (B, D)
    worst = torch.full_like(a[:, 0], -torch.inf)
    per = max(1, batch_size // len(inputs))
    for lo, hi in chunks(len(noise), per):
        rows = clip_to_range(inputs + noise[lo:hi], value_range).flatten(0, 1)  # (m * B, ...)
        moved = explain_rows(explain, model, rows, scorer.rows_target(hi - lo), batch_size)
        moved = moved.view(hi - lo, *a.shape).to(a.dtype)  # (m, B, D)
        worst = torch.maximum(worst, (moved - a).norm(dim=2).amax(0))
    return (worst / a.norm(dim=1)).to(result_dtype(inputs))
