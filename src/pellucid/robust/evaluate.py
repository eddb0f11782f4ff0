"""Robustness evaluation of a classifier: clean and adversarial accuracy, reliability, curves."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from pellucid.data.validation import check_images, check_labels, check_model_input
from pellucid.errors import InvalidInputError
from pellucid.models.inference import predict_logits
from pellucid.robust.attacks import ATTACKS, check_eps, perturbation_norm, within_budget
from pellucid.robust.reliability import ReliabilityCurve, precision_at_recall_interval, reliability_curve

__all__ = ["RobustnessResult", "accuracy_vs_eps", "evaluate_robustness", "minimal_perturbations",
           "predict_logits"]  # predict_logits: pellucid.models.inference


@dataclass
class RobustnessResult:
    """Outcome of one attack on a labelled set; per-image tensors are in input order.

    ``robust`` = clean correct AND adversarial correct, where an adversarial output outside the
    eps-ball (unbounded attacks such as DeepFool or Boundary) does not count: the clean input
    stands in for it (``within_budget`` is False there).
    """

    attack: str
    eps: float
    norm: str
    n: int
    clean_accuracy: float
    robust_accuracy: float  # clean correct AND adversarial correct
    reliability: ReliabilityCurve = field(repr=False)  # on the (budget-respecting) adversarial inputs
    seconds: float
    adversarial: torch.Tensor = field(repr=False)  # what the attack returned
    adversarial_logits: torch.Tensor = field(repr=False)  # on the budget-respecting inputs
    clean_logits: torch.Tensor = field(repr=False)
    robust: torch.Tensor = field(repr=False)  # (n,) bool
    within_budget: torch.Tensor = field(repr=False)  # (n,) bool
    stages: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    checks: list = field(default_factory=list)  # gradient-masking checks (robust.checks.Check)
    precision_at_recall_ci: tuple[float, float] | None = None  # 95 % bootstrap interval at recall 0.8

    def summary(self) -> dict:
        out = {"attack": self.attack, "eps": self.eps, "norm": self.norm, "n": self.n,
               "clean_accuracy": self.clean_accuracy, "robust_accuracy": self.robust_accuracy,
               "precision_at_recall_0.8": self.reliability.precision_at_recall(0.8),
               "reliability_auc": self.reliability.average_precision,
               **({"precision_at_recall_0.8_ci95": list(self.precision_at_recall_ci)}
                  if self.precision_at_recall_ci is not None else {}),
               "seconds": round(self.seconds, 3), "stages": self.stages, **self.info}
        if self.checks:
            out["checks"] = {c.name: c.summary() for c in self.checks}
        return out


def evaluate_robustness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: str = "pgd",
                        eps: float = 0.3, norm: str = "linf",
                        value_range: tuple[float, float] = (0.0, 1.0),
                        seed: int = 0, **attack_kwargs) -> RobustnessResult:
    """Attack ``x`` with the true labels ``y`` and score clean, robust accuracy and reliability.

    ``x``: images in ``value_range`` with the dtype and device of the model's parameters; ``y``:
    integer labels ``(B,)`` in ``0..K-1`` for a model with ``K`` outputs. ``attack_kwargs``: the
    attack's options (e.g. ``steps`` for PGD) and common arguments such as ``progress`` (see
    :mod:`pellucid.robust.attacks`); an option the attack does not have raises.
    """
    check_images(x, value_range=value_range)
    check_model_input(model, x)
    y = check_labels(y, n=x.shape[0], device=x.device)
    check_eps(eps)  # fail before any work is done
    runner = ATTACKS.get(attack)
    runner.split(attack_kwargs)  # unknown options and bad values, too
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    clean = predict_logits(model, x)
    y = check_labels(y, n_classes=clean.shape[1] if clean.dim() == 2 else None)
    run = runner(model, x, y, eps=eps, norm=norm, value_range=value_range, generator=gen,
                 **attack_kwargs)
    inside = within_budget(run.adversarial - x, eps, norm)
    x_eval = torch.where(inside.view(-1, *[1] * (x.dim() - 1)), run.adversarial, x)
    adv = predict_logits(model, x_eval)
    clean_ok, adv_ok = clean.argmax(1) == y, adv.argmax(1) == y
    robust = clean_ok & adv_ok
    # test-set noise of the reliability figure; its own generator so the attack's draws don't move it
    ci = precision_at_recall_interval(adv, y, 0.8, generator=torch.Generator().manual_seed(seed))
    return RobustnessResult(attack, eps, norm, len(y), float(clean_ok.float().mean()),
                            float(robust.float().mean()), reliability_curve(adv, y),
                            time.perf_counter() - start, run.adversarial, adv, clean, robust,
                            inside, run.stages, run.info, precision_at_recall_ci=ci)


def accuracy_vs_eps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_values, *,
                    attack: str = "pgd", seed: int = 0, **attack_kwargs) -> list[dict]:
    """Robust accuracy for each eps (same seed for each, so the curve is comparable)."""
    eps_values = list(eps_values)
    if not eps_values:
        raise InvalidInputError("eps_values must hold at least one eps")
    for e in eps_values:  # every value checked before the first attack runs
        check_eps(e, name="each eps in eps_values")
    return [{"eps": float(e), "robust_accuracy": evaluate_robustness(
        model, x, y, attack=attack, eps=float(e), seed=seed, **attack_kwargs).robust_accuracy}
            for e in eps_values]


def minimal_perturbations(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                          y: torch.Tensor) -> dict:
    """Norms of the perturbations that flipped a correct prediction, for unbounded minimising
    attacks (Boundary, DeepFool): ``{"flipped", "median_l2", "median_linf", "l2", "linf"}``."""
    flipped = (predict_logits(model, x).argmax(1) == y) & (predict_logits(model, x_adv).argmax(1) != y)
    delta = (x_adv - x)[flipped]
    l2, linf = perturbation_norm(delta, "l2"), perturbation_norm(delta, "linf")
    return {"flipped": int(flipped.sum()), "attacked": int((predict_logits(model, x).argmax(1) == y).sum()),
            "median_l2": float(l2.median()) if len(l2) else None,
            "median_linf": float(linf.median()) if len(linf) else None,
            "l2": l2.tolist(), "linf": linf.tolist()}
