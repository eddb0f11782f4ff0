r"""Gradient-masking diagnostics that accompany the adaptive budget.

- :func:`gradient_norm_histograms`: per image, the L2 norm of the cross-entropy gradient with
  respect to each layer's output (the input, TwoStep, conv, affine, logits), binned by
  :math:`\log_{10}`; exact zeros are counted apart. Masking shows up as a mass of zero or tiny
  norms at some layer.
- :func:`gate_fractions`: the share of pixels whose TwoStep is saturated (slope
  :math:`|y'(x)| <` :data:`SATURATED_SLOPE` per unit of pixel value: the pixel's output moves by
  less than 0.003 across an eps of 0.3) and the share of conv and affine units whose ReLU is off.
- :func:`adaptive_accuracy_vs_eps`: robust accuracy against the surrogate-gradient APGD stage
  (the adaptive budget's margin loss, one restart of at most 50 steps per temperature) for
  growing eps; at a large eps it must reach 0 % (:func:`check_adaptive_unbounded`), or the
  attack, not the model, is what stops.

All on clean and adversarial inputs alike; the white-box layers are read where the model has them
(:func:`pellucid.robust.surrogate.is_whitebox`), else only the input gradient.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pellucid.models.inference import attack_mode, predict_logits
from pellucid.robust.apgd import apgd_objective
from pellucid.robust.budgets import AdaptiveBudget
from pellucid.robust.checks import Check
from pellucid.robust.surrogate import is_whitebox, whitebox_parts

__all__ = ["ADAPTIVE_EPS_GRID", "LOG10_EDGES", "SATURATED_SLOPE", "adaptive_accuracy_vs_eps",
           "adaptive_diagnostics", "check_adaptive_unbounded", "gate_fractions",
           "gradient_norm_histograms"]

LOG10_EDGES = tuple(float(e) for e in range(-12, 5))  # 1e-12 .. 1e4
SATURATED_SLOPE = 1e-2
ADAPTIVE_EPS_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
_CURVE_STEPS = 50  # most APGD steps per restart of the accuracy-vs-eps curve


def _histogram(norms: torch.Tensor) -> dict:
    zero = norms == 0
    logs = norms[~zero].double().log10().clamp(LOG10_EDGES[0], LOG10_EDGES[-1])
    counts = torch.histc(logs, bins=len(LOG10_EDGES) - 1, min=LOG10_EDGES[0], max=LOG10_EDGES[-1])
    return {"zero": int(zero.sum()), "log10_edges": list(LOG10_EDGES),
            "counts": [int(c) for c in counts.tolist()],
            "median": float(norms.double().median()) if len(norms) else None}


def gradient_norm_histograms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, dict]:
    """Per layer output, the histogram of per-image :math:`\\|\\partial L / \\partial h\\|_2`,
    :math:`L` the cross-entropy (module docstring)."""
    with attack_mode(model), torch.enable_grad():
        leaf = x.detach().clone().requires_grad_(True)
        if is_whitebox(model):
            parts = whitebox_parts(model, leaf)
            names = ("pixels", "conv", "affine", "logits")
            outputs = [parts[k] for k in names]
        else:
            names, outputs = (), []
            parts = {"logits": model(leaf)}
        loss = F.cross_entropy(parts["logits"], y, reduction="sum")
        grads = torch.autograd.grad(loss, [leaf, *outputs], allow_unused=True)
    out = {}
    for name, g, like in zip(("input", *names), grads, [leaf, *outputs]):
        g = torch.zeros_like(like) if g is None else g
        out[name] = _histogram(g.flatten(1).norm(dim=1))
    return out


def gate_fractions(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Share of saturated TwoStep pixels and of conv and affine units whose ReLU is off
    (an empty dict for a model without the white-box layers)."""
    if not is_whitebox(model):
        return {}
    with attack_mode(model), torch.enable_grad():
        leaf = x.detach().clone().requires_grad_(True)
        pixels = model.twostep(leaf)
        (slope,) = torch.autograd.grad(pixels.sum(), leaf)  # elementwise: the diagonal
        with torch.no_grad():
            parts = whitebox_parts(model, x)
    return {"twostep_saturated": float((slope.abs() < SATURATED_SLOPE).double().mean()),
            "conv_relu_off": float((parts["conv"] <= 0).double().mean()),
            "affine_relu_off": float((parts["affine"] <= 0).double().mean())}


def adaptive_accuracy_vs_eps(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                             eps_values: Sequence[float] = ADAPTIVE_EPS_GRID, *,
                             budget: AdaptiveBudget | None = None, steps: int | None = None,
                             seed: int = 0, value_range=(0.0, 1.0)) -> list[dict]:
    """Robust accuracy per eps against surrogate-gradient APGD on the margin loss, one restart of
    ``steps`` steps per temperature of ``budget`` (the same seed for each eps); ``steps``
    defaults to the budget's steps, at most 50."""
    from pellucid.robust.adaptive import decision_margin, surrogate_objective

    budget = budget or AdaptiveBudget()
    steps = steps or min(_CURVE_STEPS, budget.steps)
    with attack_mode(model):
        clean_ok = decision_margin(predict_logits(model, x), y) > 0
        points = []
        for eps in eps_values:
            robust = clean_ok.clone()
            generator = torch.Generator().manual_seed(seed)
            for tau in budget.temperatures if eps > 0 else ():
                idx = torch.nonzero(robust).squeeze(1)
                if not len(idx):
                    break
                _, m = apgd_objective(surrogate_objective(model, "margin", tau), x[idx], y[idx],
                                      eps=float(eps), steps=steps, value_range=value_range,
                                      generator=generator)
                robust[idx[m <= 0]] = False
            points.append({"eps": float(eps), "robust_accuracy": float(robust.double().mean())})
    return points


def check_adaptive_unbounded(points: Sequence[dict], max_accuracy: float = 0.01) -> Check:
    """The adaptive gradient attack must reach ``<= max_accuracy`` at the largest eps."""
    last = max(points, key=lambda p: p["eps"])
    zero_at = next((p["eps"] for p in sorted(points, key=lambda p: p["eps"])
                    if p["robust_accuracy"] <= max_accuracy), None)
    reached = "never" if zero_at is None else f"first at eps {zero_at:g}"
    return Check("adaptive_unbounded", last["robust_accuracy"] <= max_accuracy,
                 last["robust_accuracy"], f"accuracy <= {max_accuracy:.0%} at eps {last['eps']:g}",
                 f"surrogate-gradient APGD: accuracy {last['robust_accuracy']:.2%} at eps "
                 f"{last['eps']:g}; <= {max_accuracy:.0%} {reached}")


def adaptive_diagnostics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, *,
                         budget: AdaptiveBudget | None = None, seed: int = 0,
                         eps_values: Sequence[float] = ADAPTIVE_EPS_GRID,
                         value_range=(0.0, 1.0)) -> tuple[list[Check], dict]:
    """Every diagnostic above on ``(x, y)`` and the adversarial inputs ``x_adv``; returns the
    checks and a JSON-ready dict."""
    points = adaptive_accuracy_vs_eps(model, x, y, eps_values, budget=budget, seed=seed,
                                      value_range=value_range)
    report = {"n": len(x), "accuracy_vs_eps": points,
              "gradient_norms": {"clean": gradient_norm_histograms(model, x, y),
                                 "adversarial": gradient_norm_histograms(model, x_adv, y)},
              "gates": {"clean": gate_fractions(model, x), "adversarial": gate_fractions(model, x_adv)}}
    finite = all(math.isfinite(p["robust_accuracy"]) for p in points)
    return ([check_adaptive_unbounded(points)] if finite and points else []), report
