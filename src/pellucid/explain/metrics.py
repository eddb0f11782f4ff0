"""Batched, tensor-native evaluation metrics for attributions, registered by name in :data:`METRICS`.

Every metric is a function ``metric(model, inputs (B, ...), attributions (same shape), target,
**options)`` and returns one score per sample, ``(B,)``; curve metrics return a small dataclass
with the per-sample score and the curve. Perturbed copies of the whole batch are built at once
and scored in chunks of ``batch_size`` rows (no loop over samples or draws); random draws come
from an explicit ``seed`` (an int or a ``torch.Generator``; the same seed gives two explainers the
same draws) and replacement values from an explicit ``baseline``. Each metric's docstring gives
its formula, its source and how it relates to Quantus' implementation.

Faithfulness
    ``infidelity`` (Yeh et al. 2019; optimally scaled, lower is better),
    ``faithfulness_correlation`` (Bhatt et al. 2020), ``faithfulness_estimate`` (Alvarez-Melis &
    Jaakkola 2018), ``monotonicity_correlation`` (Nguyen & Martinez 2020), ``deletion`` /
    ``insertion`` curves with their AUC (Petsiuk et al. 2018).
Robustness
    ``max_sensitivity`` (Yeh et al. 2019; lower is better).
Randomisation
    ``random_logit`` (Sixt et al. 2020) and ``model_parameter_randomisation`` (Adebayo et al.
    2018; both lower is better).
Localisation
    ``pointing_game`` (Zhang et al. 2018) and ``focus`` on 2x2 mosaics (Arias-Duart et al. 2022;
    :func:`make_mosaics` builds them).

``create_metric("faithfulness_correlation", n_draws=50)`` binds options; each metric's
``higher_is_better`` says which direction is better.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from pellucid.explain._metrics._core import (METRICS, BASELINE_NAMES, UnknownOptionError,
                                             baseline_draws, lookup)
from pellucid.explain._metrics.curves import PerturbationCurve, deletion, insertion
from pellucid.explain._metrics.faithfulness import (faithfulness_correlation, faithfulness_estimate,
                                                    infidelity, monotonicity_correlation)
from pellucid.explain._metrics.localisation import (Mosaics, focus, make_mosaics, mosaic,
                                                    pointing_game, quadrant_masks)
from pellucid.explain._metrics.randomisation import (RandomisationCurve,
                                                     model_parameter_randomisation, random_logit)
from pellucid.explain._metrics.robustness import max_sensitivity
from pellucid.explain._metrics.stats import (SIMILARITIES, average_ranks, cosine, pearson, spearman,
                                             ssim, ssim_flat)

__all__ = ["BASELINE_NAMES", "METRICS", "SIMILARITIES", "Mosaics", "PerturbationCurve",
           "RandomisationCurve", "average_ranks", "baseline_draws", "cosine", "create_metric",
           "deletion", "faithfulness_correlation", "faithfulness_estimate", "focus", "infidelity",
           "insertion", "make_mosaics", "max_sensitivity", "model_parameter_randomisation",
           "monotonicity_correlation", "mosaic", "pearson", "pointing_game", "quadrant_masks",
           "random_logit", "spearman", "ssim", "ssim_flat"]


def create_metric(name: str, **options: Any) -> Callable[..., Any]:
    """The metric registered as ``name`` with ``options`` bound: ``m(model, inputs, attributions,
    target)``. Unknown names and options raise :class:`~pellucid.errors.InvalidInputError`."""
    fn = lookup(METRICS, name, "metric", allow_function=False)
    keywords = [p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(keywords))
    if unknown:
        raise UnknownOptionError(f"{name} has no option {', '.join(unknown)}; its options: "
                                 f"{', '.join(keywords)}")
    bound = functools.partial(fn, **options)
    bound.higher_is_better = fn.higher_is_better
    return bound
