"""Gradient-masking checks: an evaluator that checks itself before its number is trusted.

A model can look robust because the attack's gradients are useless (zero, NaN, shattered by
rounding, saturated), not because it is. Each check below fails in a way that points to such a
cause (Athalye et al. 2018; Carlini et al. 2019, "On evaluating adversarial robustness";
the reference AutoAttack's self-checks):

- ``gradients``: no NaN input gradient, and no image whose cross-entropy gradient is exactly 0;
- ``deterministic``: two forward passes give the same logits (randomised defences need EOT);
- ``unbounded``: PGD with eps = 1 in L-inf (the whole input box) must drive accuracy to ~0 %;
- ``monotone``: robust accuracy must not increase with eps (PGD-40, eps 0 .. 0.4);
- ``black_box``: a black-box attack (Square) must not beat the white-box attacks: in an ensemble,
  Square may lower the robust accuracy left by the white-box stages by at most 0.2 points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pellucid._warnings import warn
from pellucid.models.inference import attack_mode, predict_logits
from pellucid.robust.attacks import pgd

# stand-alone black-box attacks: their result is checked against PGD-40 on the same images
BLACK_BOX_ATTACKS = ("square", "square-native")

EPS_GRID = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4)


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool | None  # None: not run (see ``detail``)
    value: float | None
    threshold: str
    detail: str

    def summary(self) -> dict:
        return {"passed": self.passed, "value": self.value, "threshold": self.threshold,
                "detail": self.detail}


class GradientMaskingWarning(UserWarning):
    """A gradient-masking check failed: the robustness number may not be trustworthy."""


def check_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> Check:
    """Cross-entropy input gradients at the clean inputs: none NaN, none identically zero."""
    n_zero = n_nan = 0
    with attack_mode(model), torch.enable_grad():
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            xb = xb.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(model(xb), yb, reduction="sum"), xb,
                                       allow_unused=True)
            g = torch.zeros_like(xb).flatten(1) if g is None else g.flatten(1)
            n_nan += int(g.isnan().any(1).sum())
            n_zero += int((g == 0).all(1).sum())
    bad = n_zero + n_nan
    return Check("gradients", bad == 0, bad / max(len(x), 1), "0 images",
                 f"{n_zero} of {len(x)} images have an all-zero input gradient, {n_nan} a NaN one")


@torch.no_grad()
def check_deterministic(model: nn.Module, x: torch.Tensor) -> Check:
    """Same logits on two passes (a random model needs expectation over transformations)."""
    a, b = predict_logits(model, x), predict_logits(model, x)
    diff = float((a - b).abs().max()) if len(x) else 0.0
    return Check("deterministic", diff == 0.0, diff, "max |logit difference| = 0",
                 "two forward passes " + ("agree" if diff == 0 else f"differ by up to {diff:.3g}"))


def check_unbounded(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int = 100,
                    step_size: float = 0.1, max_accuracy: float = 0.01,
                    value_range=(0.0, 1.0), seed: int = 0) -> Check:
    """PGD at eps = the whole input range (L-inf) must reach accuracy <= ``max_accuracy``."""
    eps = float(value_range[1] - value_range[0])
    gen = torch.Generator().manual_seed(seed)
    x_adv = pgd(model, x, y, eps=eps, steps=steps, step_size=step_size, value_range=value_range,
                generator=gen)
    acc = float((predict_logits(model, x_adv).argmax(1) == y).float().mean())
    return Check("unbounded", acc <= max_accuracy, acc, f"accuracy <= {max_accuracy:.0%}",
                 f"PGD-{steps} at L-inf eps {eps:g}: accuracy {acc:.2%}")


def check_monotone(points: Sequence[dict], *, tolerance: float = 0.002) -> Check:
    """``points``: ``[{"eps", "robust_accuracy"}]``; no increase larger than ``tolerance``."""
    pts = sorted(points, key=lambda p: p["eps"])
    rises = [(b["eps"], b["robust_accuracy"] - a["robust_accuracy"]) for a, b in zip(pts, pts[1:])]
    worst = max((r for _, r in rises), default=0.0)
    where = [f"eps {e:g} (+{r:.2%})" for e, r in rises if r > tolerance]
    return Check("monotone", worst <= tolerance, worst, f"rise <= {tolerance:.1%}",
                 "accuracy rises at " + ", ".join(where) if where else
                 f"non-increasing over {len(pts)} eps values")


def check_black_box(stages: Sequence[dict], *, tolerance: float = 0.002) -> Check:
    """Square's extra yield after the white-box stages of an ensemble (see module docstring)."""
    white = [s for s in stages if s.get("white_box", True)]
    black = [s for s in stages if not s.get("white_box", True)]
    if not white or not black:
        return Check("black_box", None, None, f"gain <= {tolerance:.1%}",
                     "not run: needs white-box and black-box stages (use --attack autoattack)")
    gain = white[-1]["robust_accuracy_after"] - black[-1]["robust_accuracy_after"]
    # the black-box stages that ran after the last white-box one: their breaks are the gain
    last_white = max(i for i, s in enumerate(stages) if s.get("white_box", True))
    after = [s for s in stages[last_white + 1:] if not s.get("white_box", True)]
    names = " + ".join(s["attack"] for s in after) or black[-1]["attack"]
    return Check("black_box", gain <= tolerance, gain, f"gain <= {tolerance:.1%}",
                 f"{names} broke {sum(s['broken'] for s in after)} images the "
                 f"white-box attacks missed ({gain:.2%} of the set)")


def check_black_box_against(white_accuracy: float, black_accuracy: float,
                            tolerance: float = 0.002) -> Check:
    """Stand-alone form: a black-box attack's robust accuracy vs a white-box attack's."""
    gain = white_accuracy - black_accuracy
    return Check("black_box", gain <= tolerance, gain, f"gain <= {tolerance:.1%}",
                 f"black-box {black_accuracy:.2%} vs white-box {white_accuracy:.2%}")


def warn_failed(checks: Sequence[Check]) -> list[Check]:
    """Issue one :class:`GradientMaskingWarning` naming every failed check; return those."""
    failed = [c for c in checks if c.passed is False]
    if failed:
        warn("gradient-masking checks failed, the robust accuracy may be overestimated: "
             + "; ".join(f"{c.name} ({c.detail})" for c in failed), GradientMaskingWarning)
    return failed


def run_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, stages: Sequence[dict] = (),
               eps_points: Sequence[dict] | None = None, value_range=(0.0, 1.0),
               seed: int = 0, warn: bool = True) -> list[Check]:
    """All checks on ``(x, y)``; ``eps_points`` (an accuracy-vs-eps curve) is computed with
    PGD-40 over :data:`EPS_GRID` when not given; ``stages`` is an ensemble's log, if any."""
    from pellucid.robust.evaluate import accuracy_vs_eps

    if eps_points is None:
        eps_points = accuracy_vs_eps(model, x, y, EPS_GRID, steps=40, seed=seed,
                                     value_range=value_range)
    checks = [check_gradients(model, x, y), check_deterministic(model, x),
              check_unbounded(model, x, y, value_range=value_range, seed=seed),
              check_monotone(eps_points), check_black_box(stages)]
    if warn:
        warn_failed(checks)
    return checks


def evaluation_checks(model: nn.Module, result, x: torch.Tensor, y: torch.Tensor, *,
                      limit: int | None = 500, value_range=(0.0, 1.0), seed: int = 0,
                      warn: bool = True) -> tuple[list[Check], list[dict]]:
    """The checks that accompany an evaluation ``result`` of ``(x, y)``.

    The gradient, unbounded and monotone checks use the first ``limit`` images (``None``: all);
    the black-box check reads an ensemble's stages, or, for a stand-alone Square run, compares
    it with PGD-40 on the same images. Returns the checks and the accuracy-vs-eps points.
    """
    from pellucid.robust.evaluate import accuracy_vs_eps, evaluate_robustness

    n = len(x) if limit is None else min(limit, len(x))
    xs, ys = x[:n], y[:n]
    points = accuracy_vs_eps(model, xs, ys, EPS_GRID, steps=40, seed=seed, value_range=value_range)
    checks = run_checks(model, xs, ys, stages=result.stages, eps_points=points,
                        value_range=value_range, seed=seed, warn=False)
    if result.attack in BLACK_BOX_ATTACKS:
        white = evaluate_robustness(model, x, y, attack="pgd", eps=result.eps, norm=result.norm,
                                    steps=40, seed=seed, value_range=value_range)
        checks = [c for c in checks if c.name != "black_box"]
        checks.append(check_black_box_against(white.robust_accuracy, result.robust_accuracy))
    if warn:
        warn_failed(checks)
    return checks, points
