"""Robustness: attacks (registry :data:`ATTACKS`, native and ART), AutoAttack, gradient-masking
checks, reliability curves, rejection and evaluation. The adaptive budget (attacks built for the
white-box layers) lives in :mod:`pellucid.robust.adaptive`, its surrogate gradients in
:mod:`pellucid.robust.surrogate` and its diagnostics in :mod:`pellucid.robust.diagnostics`.

The registry and the attacks' options import no torch (:mod:`pellucid.robust.catalogue`,
:mod:`pellucid.robust.options`, :mod:`pellucid.robust.budgets`); every other name here is
imported from its module on first use, and an attack's module when the attack is first got.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pellucid._lazy import lazy_attributes

from pellucid.robust.budgets import BUDGETS, AdaptiveBudget  # the cascade: pellucid.robust.adaptive
from pellucid.robust.catalogue import ATTACKS
from pellucid.robust.options import COMMON_ARGS, AttackOptions

if TYPE_CHECKING:  # what __getattr__ imports on first use, for type checkers and the API reference
    from pellucid.robust.attacks import (Attack, AttackRun, adam_pgd, attack_mode, eval_mode, fgm,
                                         fgsm, l2_bim, perturbation_norm, pgd, register_attack,
                                         run_attack, within_budget)
    from pellucid.robust.square import square_native
    from pellucid.robust.fab import fab_t_native
    from pellucid.robust.autoattack import autoattack
    from pellucid.robust.evaluate import (RobustnessResult, accuracy_vs_eps, evaluate_robustness,
                                          predict_logits)
    from pellucid.robust.checks import Check, GradientMaskingWarning, run_checks
    from pellucid.robust.reliability import (ReliabilityCurve, precision_at_recall_interval,
                                             reliability_curve)
    from pellucid.robust.rejection import (MaxProbabilityRejector, coverage_curve,
                                           rejection_at_clean_rates, rejection_counts,
                                           rejection_search, threshold_at_clean_rate)

__all__ = ["ATTACKS", "COMMON_ARGS", "AdaptiveBudget", "Attack", "AttackOptions", "AttackRun",
           "BUDGETS", "Check", "GradientMaskingWarning", "ReliabilityCurve", "RobustnessResult",
           "accuracy_vs_eps", "autoattack", "attack_mode", "eval_mode", "evaluate_robustness", "fgsm",
           "perturbation_norm", "pgd", "precision_at_recall_interval", "predict_logits",
           "register_attack", "reliability_curve", "run_attack", "run_checks", "square_native",
           "fab_t_native", "within_budget", "coverage_curve", "rejection_counts", "rejection_search", "adam_pgd", "fgm",
           "l2_bim", "MaxProbabilityRejector", "rejection_at_clean_rates", "threshold_at_clean_rate"]

# names whose modules import torch -> the module (under pellucid.robust) that defines them
_LAZY_IN = {
    **dict.fromkeys(("Attack", "AttackRun", "adam_pgd", "attack_mode", "eval_mode", "fgm", "fgsm", "l2_bim",
                     "perturbation_norm", "pgd", "register_attack", "run_attack", "within_budget"),
                    "attacks"),
    "square_native": "square",
    "fab_t_native": "fab",
    "autoattack": "autoattack",
    **dict.fromkeys(("RobustnessResult", "accuracy_vs_eps", "evaluate_robustness", "predict_logits"),
                    "evaluate"),
    **dict.fromkeys(("Check", "GradientMaskingWarning", "run_checks"), "checks"),
    **dict.fromkeys(("ReliabilityCurve", "precision_at_recall_interval", "reliability_curve"),
                    "reliability"),
    **dict.fromkeys(("MaxProbabilityRejector", "coverage_curve", "rejection_at_clean_rates",
                     "rejection_counts", "rejection_search", "threshold_at_clean_rate"), "rejection"),
}


_LAZY = {name: f"{__name__}.{module}" for name, module in _LAZY_IN.items()}
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
