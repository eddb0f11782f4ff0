"""Robustness: attacks (registry :data:`ATTACKS`), reliability curves, evaluation."""

from pellucid.robust.attacks import ATTACKS, eval_mode, fgsm, pgd, run_attack
from pellucid.robust.evaluate import RobustnessResult, accuracy_vs_eps, evaluate_robustness, predict_logits
from pellucid.robust.reliability import ReliabilityCurve, reliability_curve
from pellucid.robust.rejection import coverage_curve, rejection_counts, rejection_search

__all__ = ["ATTACKS", "ReliabilityCurve", "RobustnessResult", "accuracy_vs_eps", "eval_mode",
           "evaluate_robustness", "fgsm", "pgd", "predict_logits", "reliability_curve", "run_attack",
           "coverage_curve", "rejection_counts", "rejection_search"]
