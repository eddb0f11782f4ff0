"""Robustness: attacks (registry :data:`ATTACKS`, native and ART), AutoAttack, gradient-masking
checks, reliability curves, rejection and evaluation. The adaptive budget (attacks built for the
white-box layers) lives in :mod:`pellucid.robust.adaptive`, its surrogate gradients in
:mod:`pellucid.robust.surrogate` and its diagnostics in :mod:`pellucid.robust.diagnostics`."""

from pellucid.robust.attacks import (ATTACKS, COMMON_ARGS, Attack, AttackOptions, AttackRun,
                                     adam_pgd, eval_mode, fgm, fgsm, l2_bim, perturbation_norm, pgd,
                                     register_attack, run_attack, within_budget)
from pellucid.robust import art_backend  # noqa: F401  (registers apgd-ce, apgd-dlr, square, ...)
from pellucid.robust.square import square_native
from pellucid.robust.autoattack import BUDGETS, autoattack
from pellucid.robust.budgets import AdaptiveBudget  # the cascade: pellucid.robust.adaptive
from pellucid.robust.evaluate import RobustnessResult, accuracy_vs_eps, evaluate_robustness, predict_logits
from pellucid.robust.checks import Check, GradientMaskingWarning, run_checks
from pellucid.robust.reliability import ReliabilityCurve, precision_at_recall_interval, reliability_curve
from pellucid.robust.rejection import (MaxProbabilityRejector, coverage_curve, rejection_at_clean_rates,
                                       rejection_counts, rejection_search, threshold_at_clean_rate)

__all__ = ["ATTACKS", "COMMON_ARGS", "AdaptiveBudget", "Attack", "AttackOptions", "AttackRun",
           "BUDGETS", "Check", "GradientMaskingWarning", "ReliabilityCurve", "RobustnessResult",
           "accuracy_vs_eps", "autoattack", "eval_mode", "evaluate_robustness", "fgsm",
           "perturbation_norm", "pgd", "precision_at_recall_interval", "predict_logits",
           "register_attack", "reliability_curve", "run_attack", "run_checks", "square_native",
           "within_budget", "coverage_curve", "rejection_counts", "rejection_search", "adam_pgd", "fgm",
           "l2_bim", "MaxProbabilityRejector", "rejection_at_clean_rates", "threshold_at_clean_rate"]
