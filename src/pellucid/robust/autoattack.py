"""AutoAttack: an ensemble of attacks, each run on the images that are still robust.

The stages are ART's default AutoAttack ensemble (APGD-CE, APGD-DLR, DeepFool, Square), run
in sequence by pellucid rather than by ``art.attacks.evasion.AutoAttack`` so that each stage's
wall time and yield are recorded (the ART class reports neither) and the attack uses the true
labels. An image counts as broken when the model misclassifies the stage's output *and* the
output lies inside the eps-ball; the stage after sees only the images still robust. An image no
stage breaks keeps the in-budget output of lowest margin ``z_y - max_{j != y} z_j`` any stage
found, so the reliability curve scores every image at the hardest point the ensemble reached.

Budgets (:data:`BUDGETS`):

- ``"standard"``: one restart for each APGD and Square (5000 queries), like the reference
  implementation's "standard" version (Croce & Hein 2020);
- ``"standard-native"``: ``"standard"`` with :func:`pellucid.robust.square.square_native`
  (per-image proposals, about 3.6x faster) in place of ART's Square;
- ``"art-default"``: ART's defaults, 5 restarts for each APGD and 5 x 5000 queries of Square;
- ``"native"``: pellucid's own components, no ART: APGD-CE (100 steps), APGD-T on the targeted
  DLR loss (100 steps for each of the 9 highest non-true classes) and Square (5000 queries), one
  restart each (:mod:`pellucid.robust.apgd_attacks`, :mod:`pellucid.robust.square`); the
  reference "standard" list without its FAB-T stage;
- ``"native-standard"``: the reference "standard" list with pellucid's own components in its
  order: APGD-CE (100 steps), APGD-T (100 steps x 9 targets), FAB-T (100 steps x 9 targets,
  :mod:`pellucid.robust.fab`) and Square (5000 queries), one restart each, no ART;
- ``"adaptive"``: a base budget (``"standard-native"`` by default), then attacks designed for the
  white-box network's layers, see :mod:`pellucid.robust.adaptive`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from pellucid.models.inference import predict_margins
from pellucid.robust.attacks import ATTACKS, AttackRun, check_options, register_attack, within_budget
# imported to register the attacks the budgets use
from pellucid.robust import apgd_attacks, art_backend, fab, square  # noqa: F401
from pellucid.robust.budgets import BUDGETS, AdaptiveBudget, Stage
from pellucid.robust.catalogue import AutoAttackOptions

__all__ = ["AutoAttackOptions", "BUDGETS", "Stage", "StagesResult", "autoattack", "run_stages"]


@dataclass
class StagesResult:
    """What :func:`run_stages` found: per image the in-budget output of lowest margin
    (``adversarial``, ``margin``), whether it still stands (``robust``) and the index of the stage
    that broke it (``broken_at``, -1: none), and one log row per stage."""

    adversarial: torch.Tensor
    margin: torch.Tensor
    robust: torch.Tensor
    broken_at: torch.Tensor
    stages: list[dict]


def run_stages(model: nn.Module, x: torch.Tensor, y: torch.Tensor, stage_list: Sequence[Stage], *,
               eps: float, norm: str = "linf", step_size: float | None = None,
               value_range=(0.0, 1.0), generator: torch.Generator | None = None,
               progress: bool = False, batch_size: int | None = None,
               log: Callable[[str], None] | None = None, name: str = "custom") -> StagesResult:
    """Run ``stage_list`` in order, each stage on the images still robust (see the module
    docstring); ``name`` labels the log lines."""
    x_adv = x.detach().clone()
    # margin of x_adv: the lowest any in-budget output reached
    best = predict_margins(model, x, y, batch_size=2048)
    robust = best > 0  # only correctly classified images are attacked
    broken_at = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
    stages = []
    for number, stage in enumerate(stage_list):
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
            broken_at[idx[broken]] = number
        else:
            broken = torch.zeros(0, dtype=torch.bool, device=x.device)
        row = {"attack": stage.attack, **stage.kwargs, "white_box": stage.white_box,
               "attacked": len(idx), "broken": int(broken.sum()),
               "robust_accuracy_after": float(robust.float().mean()),
               "seconds": round(time.perf_counter() - start, 2)}
        stages.append(row)
        if log is not None:
            log(f"autoattack[{name}] {stage.attack}: attacked {row['attacked']}, broke "
                f"{row['broken']}, robust {row['robust_accuracy_after'] * 100:.2f} % "
                f"({row['seconds']:.1f} s)")
    return StagesResult(x_adv, best, robust, broken_at, stages)


@register_attack("autoattack", AutoAttackOptions,
                 "AutoAttack ensemble (APGD-CE, APGD-DLR, DeepFool, Square; via ART, or "
                 "pellucid's own with --budget native or native-standard)")
def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
               budget: str | Sequence[Stage] | AdaptiveBudget = AutoAttackOptions.budget,
               step_size: float | None = AutoAttackOptions.step_size,
               value_range=(0.0, 1.0), generator: torch.Generator | None = None,
               progress: bool = False, batch_size: int | None = None, log=None) -> AttackRun:
    """Run the ``budget``'s stages in order; returns the adversarial inputs and a per-stage log.

    ``budget``: a name in :data:`BUDGETS` or a custom sequence of :class:`Stage`; ``"adaptive"``
    or an :class:`~pellucid.robust.budgets.AdaptiveBudget` runs
    :func:`pellucid.robust.adaptive.adaptive_cascade`. ``step_size`` and ``batch_size`` (each
    stage's own when ``None``) go to the stages that take them.

    ``log(message)`` (e.g. ``print``) is called after each stage with its time and yield.
    """
    check_options("autoattack", AutoAttackOptions, {"budget": budget, "step_size": step_size})
    common = dict(eps=eps, norm=norm, step_size=step_size, value_range=value_range,
                  generator=generator, progress=progress, batch_size=batch_size, log=log)
    if isinstance(budget, AdaptiveBudget) or budget == "adaptive":
        from pellucid.robust.adaptive import adaptive_cascade

        return adaptive_cascade(model, x, y, budget=budget if isinstance(budget, AdaptiveBudget)
                                else AdaptiveBudget(), **common)
    if isinstance(budget, str):
        stage_list, budget_name = BUDGETS[budget], budget
    else:
        stage_list, budget_name = tuple(budget), "custom"
    done = run_stages(model, x, y, stage_list, name=budget_name, **common)
    return AttackRun(done.adversarial, done.stages, {"budget": budget_name})
