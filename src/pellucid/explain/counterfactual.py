"""Counterfactuals by pixel-space gradient ascent along a pullback (the paper's "PGA").

    x_0 = x
    repeat ``steps``:
        g   = d score(x_i) / dx                      (through the surrogate gates, or the plain gradient)
        x'  = x_i + alpha * g / max(|g_b|_2, 1e-20)  (per-sample L2-normalised step)
        x'  = x + (x' - x) * min(1, eps / |x' - x|_2) (if eps is set: L2 ball around the input)
        x_{i+1} = clamp(x', pixel_range)
    explanation = x_steps - x, counterfactual = x_steps

Paper: alpha = 20 and 5 steps for 224 x 224 inputs in [-1, 1]; pellucid models take [0, 1], where
the same L2 step is alpha = 10.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pellucid.data.validation import check_model_input
from pellucid.errors import InvalidInputError
from pellucid.explain.base import Explainer, check_inputs, model_lock, preserved_state
from pellucid.explain.methods import create_explainer
from pellucid.explain.layers import layer_output
from pellucid.explain.targets import Target, resolve_target, select_target, target_layer

__all__ = ["CounterfactualResult", "counterfactual"]


@dataclass
class CounterfactualResult:
    """``inputs``, ``counterfactual``, ``difference = counterfactual - inputs`` and the target
    ``scores`` before each step and after the last, shape ``(steps + 1, B)``."""

    inputs: torch.Tensor
    counterfactual: torch.Tensor
    scores: torch.Tensor
    target: object

    @property
    def difference(self) -> torch.Tensor:
        return self.counterfactual - self.inputs


def counterfactual(model: nn.Module | Explainer, x: torch.Tensor, target: Target = None, *,
                   steps: int = 5, alpha: float = 20.0, eps: float | None = None,
                   pixel_range: tuple[float, float] | None = (0.0, 1.0), method: str = "pullback",
                   **explainer_kwargs) -> CounterfactualResult:
    """Ascend ``target``'s score from ``x`` by ``steps`` L2-normalised steps of length ``alpha``.

    ``model`` is a module (explained with ``method``: ``"pullback"``, or ``"gradient"`` for the
    vanilla baseline; ``explainer_kwargs`` such as ``temperature`` go to it) or an explainer.
    A ``None`` target is fixed to each sample's top output at ``x``; hidden-layer targets
    (:class:`~pellucid.explain.targets.LayerTarget`) ascend a unit, a direction or a similarity of a
    layer's features. ``x`` is not modified, nor is
    the model (a train-mode model's state is restored after every forward). ``x`` must have the
    model's parameter dtype and device.
    """
    if int(steps) != steps or steps < 0:
        raise InvalidInputError(f"steps must be a non-negative integer, got {steps!r}")
    if not alpha > 0:
        raise InvalidInputError(f"alpha (the L2 step length) must be positive, got {alpha!r}")
    if eps is not None and not eps > 0:
        raise InvalidInputError(f"eps (the L2 radius) must be positive or None, got {eps!r}")
    x0 = check_inputs(x).detach()
    if pixel_range is not None:
        lo, hi = pixel_range
        if float(x0.min()) < lo or float(x0.max()) > hi:
            raise InvalidInputError(f"inputs lie in [{float(x0.min()):.4g}, {float(x0.max()):.4g}], "
                                    f"outside pixel_range [{lo}, {hi}]; pass the model's input range")
    explainer = create_explainer(method, model, **explainer_kwargs) if isinstance(model, nn.Module) else model
    check_model_input(explainer.model, x0, name="inputs")
    shape = (-1,) + (1,) * (x0.dim() - 1)  # per-sample scalars broadcast over (C, H, W)
    xi, scores = x0.clone(), []
    for _ in range(int(steps)):
        grad, score, target = explainer.gradient(xi, target)
        scores.append(score)
        step = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-20).view(shape)
        xi = xi + alpha * step
        if eps is not None:
            delta = xi - x0
            xi = x0 + delta * (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-20)).clamp(max=1.0).view(shape)
        if pixel_range is not None:
            xi = xi.clamp(*pixel_range)
    with torch.no_grad(), model_lock(explainer.model), preserved_state(explainer.model):
        output = layer_output(explainer.model, target_layer(target), xi)  # or a layer's features
        target = resolve_target(output, target)
        scores.append(select_target(output, target))
    return CounterfactualResult(x0, xi, torch.stack(scores), target)
