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

from pellucid.errors import InvalidInputError
from pellucid.robust.attacks import ATTACKS, AttackRun, eval_mode, within_budget
from pellucid.robust import art_backend  # noqa: F401  (registers the ART attacks used below)
from pellucid.robust.square import margin


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


@torch.no_grad()
def _margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """``z_y - max_{j != y} z_j`` per image; > 0 where the prediction is correct (ties: argmax)."""
    with eval_mode(model):
        logits = torch.cat([model(xb) for xb in x.split(batch_size)])
    m = margin(logits, y)
    return torch.where(logits.argmax(1) == y, m.clamp_min(torch.finfo(m.dtype).tiny), m.clamp_max(0))


@ATTACKS.register("autoattack", "AutoAttack ensemble (APGD-CE, APGD-DLR, DeepFool, Square via ART)")
def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
               budget: str | Sequence[Stage] = "standard", step_size: float | None = None,
               value_range=(0.0, 1.0), generator: torch.Generator | None = None,
               progress: bool = False, log=None, **_) -> AttackRun:
    """Run the ``budget``'s stages in order; returns the adversarial inputs and a per-stage log.

    ``budget``: a name in :data:`BUDGETS` or a custom sequence of :class:`Stage`.

    ``log(message)`` (e.g. ``print``) is called after each stage with its time and yield.
    """
    if isinstance(budget, str):
        if budget not in BUDGETS:
            raise InvalidInputError(f"unknown AutoAttack budget {budget!r}; choose from {sorted(BUDGETS)}")
        stage_list, budget_name = BUDGETS[budget], budget
    else:
        stage_list, budget_name = tuple(budget), "custom"
    x_adv = x.detach().clone()
    best = _margins(model, x, y)  # margin of x_adv: the lowest any in-budget output reached
    robust = best > 0  # only correctly classified images are attacked
    stages = []
    for stage in stage_list:
        idx = torch.nonzero(robust).squeeze(1)
        start = time.perf_counter()
        if len(idx):
            out = ATTACKS.get(stage.attack)(model, x[idx], y[idx], eps=eps, norm=norm,
                                            step_size=step_size, value_range=value_range,
                                            generator=generator, progress=progress, **stage.kwargs)
            out = out.adversarial if isinstance(out, AttackRun) else out
            m = _margins(model, out, y[idx])
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

