"""The attack registry, :data:`ATTACKS`, with every attack pellucid ships declared, without torch.

Each attack is declared by name, summary, options dataclass (:mod:`pellucid.robust.options`) and
the module that registers it (:func:`pellucid.robust.attacks.register_attack`). Listing the
attacks with their options (``ATTACKS.declarations()``: ``pellucid evaluate --help``) imports
nothing; ``ATTACKS.get(name)`` and ``ATTACKS.entries()`` import the attack's module, whose
registration must match the declaration (summary, and options with the same fields). The order
of the declarations is the order of ``--attack``'s help and of the option flags.

Also here: :data:`CHUNK_SIZE`, the evaluation's default number of images attacked together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pellucid._registry import Declaration, Registry
from pellucid.robust.budgets import BUDGETS, AdaptiveBudget, Stage
from pellucid.robust.options import (AdamPGDOptions, APGDNativeOptions, APGDOptions, APGDTargetedOptions,
                                     AttackOptions, BoundaryOptions, DeepFoolOptions,
                                     FABTargetedOptions, FGMOptions,
                                     FGSMOptions, L2BIMOptions, PGDOptions, SquareOptions, attack_option,
                                     same_fields, step_size_option)

if TYPE_CHECKING:
    from pellucid.robust.attacks import Attack

__all__ = ["ATTACKS", "AutoAttackOptions", "CHUNK_SIZE"]

# Images per evaluation chunk (see evaluate_robustness): a multiple of PGD's and APGD's batch (1024),
# so the default PGD evaluation is the one before chunks existed; and above the 1,902 images of the
# 3-vs-5 test set, so every attack on it is one chunk and gives the results it gave before.
CHUNK_SIZE = 2048


def _check_options(declared: Declaration, attack: Attack) -> None:
    if not same_fields(declared.info, attack.options):
        raise TypeError(f"attack {declared.name!r}: its options {attack.options.__module__}."
                        f"{attack.options.__qualname__} differ from those it is declared with "
                        f"({declared.info.__module__}.{declared.info.__qualname__}); declare the same "
                        "fields")


ATTACKS: Registry[Attack] = Registry("attack", info=lambda attack: attack.options, check=_check_options)


# --- AutoAttack's options (here, torch-free, for the CLI's --help; pellucid.robust.autoattack runs it)

@dataclass(frozen=True)
class AutoAttackOptions(AttackOptions):
    budget: str | tuple[Stage, ...] | AdaptiveBudget = attack_option(
        "standard", "AutoAttack budget: standard = 1 restart per attack; standard-native = standard "
        "with square-native; art-default = ART's 5 restarts (5 x 5000 Square queries); native = "
        "pellucid's own apgd-ce-native, apgd-t-native (9 targets), square-native, no ART and no "
        "FAB-T; native-standard = pellucid's own in the reference standard order: apgd-ce-native, "
        "apgd-t-native, fab-t-native (9 targets each), square-native; adaptive = "
        "standard-native, then attacks built for the white-box layers (surrogate gradients, "
        "transfer, ray search, Square); its options: --losses, --temperatures, --steps, --restarts, "
        "--transfer-steps, --transfer-from, --decision-queries, --queries, --square-restarts, "
        "--base-budget (see docs/adaptive-attacks.md)",
        choices=tuple(sorted([*BUDGETS, "adaptive"])))
    step_size: float | None = step_size_option()

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.budget, (str, AdaptiveBudget)):  # custom stages: each must exist
            for stage in self.budget:
                ATTACKS.get(stage.attack).check_options(stage.kwargs)


def _declare(module: str, *attacks: tuple[str, type, str]) -> None:
    for name, options, summary in attacks:
        ATTACKS.declare(name, module=f"pellucid.robust.{module}", summary=summary, info=options)


_declare("attacks",
         ("pgd", PGDOptions, "projected gradient descent (Madry et al.), L-inf or L2, random start"),
         ("adam-pgd", AdamPGDOptions, "PGD whose step is Adam's update of the input gradient, L-inf or L2"),
         ("l2-bim", L2BIMOptions, "L2 basic iterative method (L2 PGD starting at x)"),
         ("fgsm", FGSMOptions, "fast gradient sign method (one L-inf step of size eps)"),
         ("fgm", FGMOptions, "fast gradient method (one L2 step of length eps)"))
_declare("art_backend",
         ("apgd-ce", APGDOptions, "AutoPGD on cross-entropy (ART), 100 steps"),
         ("apgd-dlr", APGDOptions, "AutoPGD on the DLR loss (ART), 100 steps"),
         ("square", SquareOptions, "Square attack (ART): black-box random search, 5000 queries"),
         ("deepfool", DeepFoolOptions, "DeepFool (ART): minimal L2 perturbation, unbounded"),
         ("boundary", BoundaryOptions, "Boundary attack (ART): decision-based minimal perturbation, "
                                       "unbounded"))
_declare("square",
         ("square-native", SquareOptions, "Square attack, pellucid's tensor implementation (L-inf): "
                                          "per-image windows, one forward per query on robust images"))
_declare("apgd_attacks",
         ("apgd-ce-native", APGDNativeOptions, "AutoPGD on cross-entropy, pellucid's implementation "
                                               "(L-inf), 100 steps"),
         ("apgd-dlr-native", APGDNativeOptions, "AutoPGD on the DLR loss, pellucid's implementation "
                                                "(L-inf), 100 steps"),
         ("apgd-t-native", APGDTargetedOptions, "targeted AutoPGD on the targeted DLR loss, pellucid's "
                                                "implementation (L-inf), 9 targets x 100 steps"))
_declare("fab",
         ("fab-t-native", FABTargetedOptions, "targeted FAB (minimal L-inf boundary projections), "
                                              "pellucid's implementation, 9 targets x 100 steps"))
_declare("autoattack",
         ("autoattack", AutoAttackOptions, "AutoAttack ensemble (APGD-CE, APGD-DLR, DeepFool, Square; "
                                           "via ART, or pellucid's own with --budget native or native-standard)"))
