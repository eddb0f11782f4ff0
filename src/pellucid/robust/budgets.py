"""The budgets of the attack ensembles: AutoAttack's stage lists and the adaptive budget's options.

:data:`BUDGETS` names the stage lists of :func:`pellucid.robust.autoattack.autoattack`;
:class:`AdaptiveBudget` holds the options of the adaptive cascade
(:func:`pellucid.robust.adaptive.adaptive_cascade`), which runs one of those stage lists first
and then the attacks built for the white-box network's layers. Both live here, below the modules
that run them, so that the options can be checked (and listed by ``pellucid evaluate --help``)
without importing the attacks or torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pellucid.errors import ConfigError
from pellucid.robust.options import AttackOptions, attack_option

__all__ = ["ADAPTIVE_LOSSES", "AdaptiveBudget", "BUDGETS", "Stage"]


@dataclass(frozen=True)
class Stage:
    attack: str  # a name in ATTACKS
    kwargs: dict[str, Any]
    white_box: bool = True


BUDGETS: dict[str, tuple[Stage, ...]] = {
    "standard": (Stage("apgd-ce", {"steps": 100, "restarts": 1}),
                 Stage("apgd-dlr", {"steps": 100, "restarts": 1}),
                 Stage("deepfool", {"steps": 100}),
                 Stage("square", {"queries": 5000, "restarts": 1}, white_box=False)),
    # the standard budget with pellucid's Square (per-image proposals, robust images only)
    "standard-native": (Stage("apgd-ce", {"steps": 100, "restarts": 1}),
                        Stage("apgd-dlr", {"steps": 100, "restarts": 1}),
                        Stage("deepfool", {"steps": 100}),
                        Stage("square-native", {"queries": 5000, "restarts": 1}, white_box=False)),
    "art-default": (Stage("apgd-ce", {"steps": 100, "restarts": 5}),
                    Stage("apgd-dlr", {"steps": 100, "restarts": 5}),
                    Stage("deepfool", {"steps": 100}),
                    Stage("square", {"queries": 5000, "restarts": 5}, white_box=False)),
    # pellucid's own components, the reference "standard" list without FAB-T: APGD-CE, APGD-T
    # (9 targets), Square (pellucid.robust.apgd_attacks, pellucid.robust.square)
    "native": (Stage("apgd-ce-native", {"steps": 100, "restarts": 1}),
               Stage("apgd-t-native", {"steps": 100, "restarts": 1, "n_target_classes": 9}),
               Stage("square-native", {"queries": 5000, "restarts": 1}, white_box=False)),
    # pellucid's own components in the reference "standard" order: APGD-CE, APGD-T, FAB-T (9
    # targets each), Square (pellucid.robust.apgd_attacks, pellucid.robust.fab, pellucid.robust.square)
    "native-standard": (Stage("apgd-ce-native", {"steps": 100, "restarts": 1}),
                        Stage("apgd-t-native", {"steps": 100, "restarts": 1, "n_target_classes": 9}),
                        Stage("fab-t-native", {"steps": 100, "restarts": 1, "n_target_classes": 9}),
                        Stage("square-native", {"queries": 5000, "restarts": 1}, white_box=False)),
}

# the adaptive budget's losses (see pellucid.robust.adaptive.LOSSES); evidence and feature need
# the white-box network's layers
ADAPTIVE_LOSSES = ("ce", "margin", "evidence", "feature")


def _split(value: Any, name: str) -> tuple[str, ...]:
    """A comma-separated string (the command line's form) or a sequence, as a tuple of strings."""
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [str(v).strip() for v in items]
    if not items or any(not v for v in items):
        raise ConfigError(f"{name} must be a non-empty comma-separated list, got {value!r}")
    return tuple(items)


def _positive_floats(value: Any, name: str) -> tuple[float, ...]:
    out = []
    for item in _split(value, name):
        try:
            t = float(item)
        except ValueError:
            t = float("nan")
        if not (math.isfinite(t) and t > 0):
            raise ConfigError(f"{name} must be finite numbers > 0, got {item!r} in {value!r}")
        out.append(t)
    return tuple(out)


@dataclass(frozen=True)
class AdaptiveBudget(AttackOptions):
    """Options of the adaptive budget (``pellucid evaluate DIR --budget adaptive``).

    The cascade runs the ``base_budget``'s stages, then on the images still standing: APGD with
    surrogate gradients for each of ``losses`` (``restarts`` x ``steps``, restart ``r`` at
    temperature ``temperatures[r mod len]``, the first warm-started from the best point found
    so far), transfer attacks (``transfer_steps`` APGD steps on a smooth copy of the model and on
    the model in ``transfer_from``), a decision-based ray search (``decision_queries``) and
    pellucid's Square (``square_restarts`` x ``queries``). ``losses`` and ``temperatures`` take a
    comma-separated string or a sequence.
    """

    base_budget: str = attack_option("standard-native", "the AutoAttack budget the adaptive cascade "
                                     "runs first", choices=tuple(sorted(BUDGETS)))
    losses: tuple[str, ...] | str = attack_option(
        ("margin", "evidence", "feature"), "losses of the surrogate-gradient APGD stages, one stage "
        "each (ce, margin, evidence, feature)", default_text="margin,evidence,feature")
    temperatures: tuple[float, ...] | str = attack_option(
        (0.1, 0.03, 0.01), "surrogate temperatures > 0, swept over the restarts",
        default_text="0.1,0.03,0.01")
    steps: int = attack_option(200, "iterations", min=1)
    restarts: int = attack_option(3, "restarts", min=1)
    transfer_steps: int = attack_option(100, "APGD steps on each transfer source (0: no transfer)", min=0)
    transfer_from: str | None = attack_option(
        None, "a model directory (e.g. a LeNet run) to transfer attacks from", default_text="none")
    decision_queries: int = attack_option(1000, "queries of the decision-based ray search (0: none)",
                                          min=0)
    queries: int = attack_option(20000, "Square queries (per restart)", min=1)
    square_restarts: int = attack_option(1, "restarts of the final Square stage", min=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        losses = _split(self.losses, "losses (--losses)")
        unknown = [v for v in losses if v not in ADAPTIVE_LOSSES]
        if unknown:
            raise ConfigError(f"losses (--losses) must be among {', '.join(ADAPTIVE_LOSSES)}, "
                              f"got {unknown[0]!r}")
        object.__setattr__(self, "losses", losses)
        object.__setattr__(self, "temperatures",
                           _positive_floats(self.temperatures, "temperatures (--temperatures)"))
        if self.transfer_from is not None and not self.transfer_from.strip():
            raise ConfigError("transfer_from (--transfer-from) must name a model directory")
