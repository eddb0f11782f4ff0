"""Randomisation sanity checks: an explanation that does not change when the explained class or
the model's weights change does not explain the model."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from pellucid.errors import InvalidInputError
from pellucid.explain._metrics._core import (ExplainFn, Scorer, Seed, check_batch, check_count, explain_fn,
                                             explain_rows, lookup, make_generator, register,
                                             result_dtype, seeded)
from pellucid.explain._metrics.stats import SIMILARITIES, Similarity
from pellucid.explain.base import Explainer, model_lock
from pellucid.explain.targets import Target

__all__ = ["RandomisationCurve", "model_parameter_randomisation", "random_logit"]


@register("random_logit",
          "similarity of the explanations for the target and a random other class (Sixt et al. "
          "2020)",
          higher_is_better=False)
def random_logit(model: nn.Module, inputs: torch.Tensor, attributions: torch.Tensor,
                 target: Target = None, *, explainer: str | Explainer | ExplainFn = "gradient",
                 explainer_options: dict | None = None, similarity: str | Similarity = "ssim",
                 other_targets: torch.Tensor | None = None, seed: Seed = 0,
                 batch_size: int = 256) -> torch.Tensor:
    """Random-logit test (Sixt et al. 2020, "When Explanations Lie: Why Many Modified BP
    Attributions Fail"), ``(B,)``::

        RL = sim( Phi_c(x), Phi_c'(x) ),   c' ~ U({0..K-1} minus {c})

    ``Phi_c(x)``: the given ``attributions`` for class ``c``; ``Phi_c'``: the ``explainer`` for a
    random other class (or the given ``other_targets``, ``(B,)``). ``similarity``: a name in
    :data:`SIMILARITIES` (``"ssim"``: 2-D SSIM of the maps; ``"ssim_flat"``: Quantus'
    ``RandomLogit`` default) or ``f(a, b) -> (B,)``. Lower is better (the explanation depends on
    the class).
    """
    check_batch(inputs, attributions)
    similar = lookup(SIMILARITIES, similarity, "similarity")
    scorer = Scorer(model, inputs, target, batch_size)
    if callable(scorer.target):
        raise InvalidInputError("random_logit swaps the explained class: pass class indices as the "
                                "target, not a function")
    classes = scorer.n_outputs
    if classes < 2:
        raise InvalidInputError(f"random_logit needs a model with at least 2 outputs, got {classes}")
    if other_targets is None:
        gen = make_generator(seed, inputs.device)
        shift = torch.randint(1, classes, (len(inputs),), generator=gen, device=gen.device)
        other = (scorer.target + shift.to(inputs.device)) % classes
    else:
        other = _check_other_targets(other_targets, scorer.target, classes)
    explain = explain_fn(explainer, explainer_options)
    moved = explain_rows(explain, model, inputs, other, batch_size)
    return similar(attributions, moved).to(result_dtype(inputs))


def _check_other_targets(other: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    if not isinstance(other, torch.Tensor) or other.is_floating_point() or other.shape != target.shape:
        raise InvalidInputError(f"other_targets must be an integer tensor of shape "
                                f"{tuple(target.shape)}, one class per sample")
    other = other.to(target.device).long()
    if bool(((other < 0) | (other >= classes)).any()) or bool((other == target).any()):
        raise InvalidInputError(f"other_targets must lie in 0..{classes - 1} and differ from the "
                                "explained targets")
    return other


@dataclass(frozen=True)
class RandomisationCurve:
    """``curve (B, L)``: the similarity after randomising ``layers[:l + 1]`` (cascading) or
    ``layers[l]`` alone; ``score (B,)``: its last column (every layer randomised)."""

    score: torch.Tensor
    curve: torch.Tensor
    layers: tuple[str, ...]


@register("model_parameter_randomisation",
          "similarity of the explanations after re-initialising layers top-down (Adebayo et al. "
          "2018)",
          higher_is_better=False)
def model_parameter_randomisation(model: nn.Module, inputs: torch.Tensor, attributions: torch.Tensor,
                                  target: Target = None, *,
                                  explainer: str | Explainer | ExplainFn = "gradient",
                                  explainer_options: dict | None = None,
                                  similarity: str | Similarity = "spearman", cascading: bool = True,
                                  seed: int = 0, batch_size: int = 256,
                                  max_layers: int | None = None) -> RandomisationCurve:
    """Model-parameter randomisation test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

    Layers with ``reset_parameters()`` are re-initialised from the output towards the input, on a
    deep copy (the caller's model is never changed); after layer ``l``::

        curve[:, l] = sim( Phi(x; theta), Phi(x; theta with layers 1..l re-initialised) )

    (``cascading=False``: only layer ``l`` re-initialised). Each layer is reset under
    ``torch.manual_seed(seed)`` (the global RNG state is restored afterwards), as Quantus' ``MPRT``
    does with ``seed + 1``. ``explainer``: a registered name or ``f(model, inputs, target)``,
    called on the randomised copy for the target resolved on the original model. ``similarity``:
    default Spearman rank correlation. ``max_layers``: randomise only the top ``max_layers``
    layers (the score then compares with those re-initialised; for deep networks, where every
    layer costs one explanation of the batch). Lower is better.
    """
    check_batch(inputs, attributions)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidInputError(f"seed must be an int, got {seed!r}")
    similar = lookup(SIMILARITIES, similarity, "similarity")
    scorer = Scorer(model, inputs, target, batch_size)
    with model_lock(model):
        randomised = copy.deepcopy(model)
    layers = [(name, m) for name, m in randomised.named_modules()
              if callable(getattr(m, "reset_parameters", None))][::-1]
    if not layers:
        raise InvalidInputError(f"{type(model).__name__} has no layer with reset_parameters() to "
                                "randomise")
    if max_layers is not None:
        layers = layers[:check_count(max_layers, "max_layers")]
    original = {k: v.clone() for k, v in randomised.state_dict().items()} if not cascading else None
    curve = []
    for _, layer in layers:  # one step per layer, each a batched explanation
        if original is not None:
            randomised.load_state_dict(original)
        with seeded(seed, randomised):
            layer.reset_parameters()
        moved = explain_rows(explain_fn(explainer, explainer_options), randomised, inputs,
                             scorer.target, batch_size)
        curve.append(similar(attributions, moved))
    curve_t = torch.stack(curve, 1).to(result_dtype(inputs))  # (B, L)
    return RandomisationCurve(curve_t[:, -1], curve_t, tuple(name for name, _ in layers))
