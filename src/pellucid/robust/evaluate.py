"""Robustness evaluation of a classifier: clean and adversarial accuracy, reliability, curves."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from pellucid.data.validation import check_images
from pellucid.errors import InvalidInputError
from pellucid.robust.attacks import eval_mode, run_attack
from pellucid.robust.reliability import ReliabilityCurve, reliability_curve


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    with eval_mode(model):
        return torch.cat([model(xb) for xb in x.split(batch_size)])


@dataclass
class RobustnessResult:
    attack: str
    eps: float
    n: int
    clean_accuracy: float
    robust_accuracy: float  # clean correct AND adversarial correct
    reliability: ReliabilityCurve = field(repr=False)  # on the adversarial inputs
    seconds: float
    adversarial: torch.Tensor = field(repr=False)
    adversarial_logits: torch.Tensor = field(repr=False)
    clean_logits: torch.Tensor = field(repr=False)

    def summary(self) -> dict:
        return {"attack": self.attack, "eps": self.eps, "n": self.n,
                "clean_accuracy": self.clean_accuracy, "robust_accuracy": self.robust_accuracy,
                "precision_at_recall_0.8": self.reliability.precision_at_recall(0.8),
                "reliability_auc": self.reliability.average_precision,
                "seconds": round(self.seconds, 3)}


def evaluate_robustness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: str = "pgd",
                        eps: float = 0.3, value_range: tuple[float, float] = (0.0, 1.0),
                        seed: int = 0, **attack_kwargs) -> RobustnessResult:
    """Attack ``x`` with the true labels ``y`` and score clean, robust accuracy and reliability."""
    check_images(x, value_range=value_range)
    if not eps >= 0:  # fail before any work is done
        raise InvalidInputError(f"eps must be >= 0, got {eps}")
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    clean = predict_logits(model, x)
    x_adv = run_attack(attack, model, x, y, eps=eps, value_range=value_range, generator=gen,
                       **attack_kwargs)
    adv = predict_logits(model, x_adv)
    clean_ok, adv_ok = clean.argmax(1) == y, adv.argmax(1) == y
    return RobustnessResult(attack, eps, len(y), float(clean_ok.float().mean()),
                            float((clean_ok & adv_ok).float().mean()), reliability_curve(adv, y),
                            time.perf_counter() - start, x_adv, adv, clean)


def accuracy_vs_eps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_values, *,
                    attack: str = "pgd", seed: int = 0, **attack_kwargs) -> list[dict]:
    """Robust accuracy for each eps (same seed for each, so the curve is comparable)."""
    return [{"eps": float(e), "robust_accuracy": evaluate_robustness(
        model, x, y, attack=attack, eps=float(e), seed=seed, **attack_kwargs).robust_accuracy}
            for e in eps_values]
