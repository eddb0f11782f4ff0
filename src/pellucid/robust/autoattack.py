"""AutoAttack: an ensemble of attacks, each run on the images that are still robust.

The stages are ART's default AutoAttack ensemble (APGD-CE, APGD-DLR, DeepFool, Square), run
in sequence by pellucid rather than by ``art.attacks.evasion.AutoAttack`` so that each stage's
wall time and yield are recorded (the ART class reports neither) and the attack uses the true
labels. An image counts as broken when the model misclassifies the stage's output *and* the
output lies inside the eps-ball; the stage after sees only the images still robust. An image no
stage breaks keeps the in-budget output of lowest margin ``z_y - max_{j != y} z_j`` any stage
found, so the reliability curve scores every image at the hardest point the ensemble reached.

Two budgets (:data:`BUDGETS`):

- ``"standard"``: one restart for each APGD and Square (5000 queries), like the reference
  implementation's "standard" version (Croce & Hein 2020);
- ``"standard-native"``: ``"standard"`` with :func:`pellucid.robust.square.square_native`
  (per-image proposals, about 3.6x faster) in place of ART's Square;
- ``"art-default"``: ART's defaults, 5 restarts for each APGD and 5 x 5000 queries of Square.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from pellucid.models.inference import predict_margins
from pellucid.robust.attacks import (ATTACKS, AttackOptions, AttackRun, attack_option, check_options,
                                     register_attack, step_size_option, within_budget)
from pellucid.robust import art_backend, square  # noqa: F401  (register the attacks used below)


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
}


@dataclass(frozen=True)
class AutoAttackOptions(AttackOptions):
    budget: str | tuple[Stage, ...] = attack_option(
        "standard", "AutoAttack budget: standard = 1 restart per attack; standard-native = standard "
        "with square-native; art-default = ART's 5 restarts (5 x 5000 Square queries)",
        choices=tuple(sorted(BUDGETS)))
    step_size: float | None = step_size_option()

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.budget, str):  # custom stages: every attack and option must exist
            for stage in self.budget:
                ATTACKS.get(stage.attack).check_options(stage.kwargs)


@register_attack("autoattack", AutoAttackOptions,
                 "AutoAttack ensemble (APGD-CE, APGD-DLR, DeepFool, Square via ART)")
def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
               budget: str | Sequence[Stage] = AutoAttackOptions.budget,
               step_size: float | None = AutoAttackOptions.step_size,
               value_range=(0.0, 1.0), generator: torch.Generator | None = None,
               progress: bool = False, batch_size: int | None = None, log=None) -> AttackRun:
    """Run the ``budget``'s stages in order; returns the adversarial inputs and a per-stage log.

    ``budget``: a name in :data:`BUDGETS` or a custom sequence of :class:`Stage`. ``step_size``
    and ``batch_size`` (each stage's own when ``None``) go to the stages that take them.

    ``log(message)`` (e.g. ``print``) is called after each stage with its time and yield.
    """
    check_options("autoattack", AutoAttackOptions, {"budget": budget, "step_size": step_size})
    if isinstance(budget, str):
        stage_list, budget_name = BUDGETS[budget], budget
    else:
        stage_list, budget_name = tuple(budget), "custom"
    x_adv = x.detach().clone()
    # margin of x_adv: the lowest any in-budget output reached
    best = predict_margins(model, x, y, batch_size=2048)
    robust = best > 0  # only correctly classified images are attacked
    stages = []
    for stage in stage_list:
        idx = torch.nonzero(robust).squeeze(1)
        start = time.perf_counter()
        if len(idx):
            attack = ATTACKS.get(stage.attack)
            shared = {"batch_size": batch_size} if batch_size is not None else {}
            if step_size is not None and "step_size" in attack.option_names:
                shared["step_size"] = step_size
            out = attack(model, x[idx], y[idx], eps=eps, norm=norm, value_range=value_range,
                         generator=generator, progress=progress,
                         **{**shared, **stage.kwargs}).adversarial
            m = predict_margins(model, out, y[idx], batch_size=2048)
            # keep the in-budget output closest to the boundary, broken or not, so that an image
            # the ensemble could not break is scored (reliability) at its hardest point, not clean
            closer = within_budget(out - x[idx], eps, norm) & (m < best[idx])
            x_adv[idx[closer]], best[idx[closer]] = out[closer], m[closer]
            broken = closer & (m <= 0)
            robust[idx[broken]] = False
        else:
            broken = torch.zeros(0, dtype=torch.bool)
        row = {"attack": stage.attack, **stage.kwargs, "white_box": stage.white_box,
               "attacked": len(idx), "broken": int(broken.sum()),
               "robust_accuracy_after": float(robust.float().mean()),
               "seconds": round(time.perf_counter() - start, 2)}
        stages.append(row)
        if log is not None:
            log(f"autoattack[{budget_name}] {stage.attack}: attacked {row['attacked']}, broke "
                f"{row['broken']}, robust {row['robust_accuracy_after'] * 100:.2f} % "
                f"({row['seconds']:.1f} s)")
    return AttackRun(x_adv, stages, {"budget": budget_name})

