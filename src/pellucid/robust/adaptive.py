r"""The adaptive budget: attacks designed for the white-box network's layers, in one cascade.

A robustness claim stands only once attacks built for the defence's components have failed
(Athalye et al. 2018; Tramer et al. 2020). :func:`adaptive_cascade` runs, each stage only on the
images still standing (correct and not yet broken):

1. the **base** budget's stages (``standard-native`` by default: APGD-CE, APGD-DLR, DeepFool,
   Square), exactly as :func:`pellucid.robust.autoattack.autoattack` runs them with the same
   generator, so every image the base budget breaks is broken here too;
2. **surrogate-gradient APGD**, one stage per loss (:data:`LOSSES`): the forward pass is exact,
   the backward pass goes through the smooth surrogates of :mod:`pellucid.robust.surrogate`
   (TwoStep, max over poses, rectifiers, logical layer). ``restarts`` runs of ``steps`` steps;
   restart ``r`` uses temperature ``temperatures[r mod len]``; the first starts from the lowest-margin
   point found so far, the others from random points in the ball;
3. **transfer** (not white-box gradients of the model itself): APGD on the cross-entropy of a
   smooth copy of the model (surrogates in the forward too, at the first temperature) and, with
   ``transfer_from``, of another trained model (e.g. a LeNet); every iterate is checked on the
   real model;
4. **ray search**, decision-based (:mod:`pellucid.robust.raysearch`), from the direction towards
   the nearest test image of the other class;
5. pellucid's **Square** (:func:`pellucid.robust.square.square_native`) with
   ``square_restarts`` x ``queries``.

An image is broken when the model misclassifies a stage's output, which must lie inside the eps
ball and the value range (checked on every output; a violation is a bug and raises). Each image
keeps the in-budget point of lowest margin :math:`z_y - \max_{j \ne y} z_j` any stage found, and
the cascade records which stage broke it.

Losses (maximised; :math:`m(z) = z_y - \max_{j \ne y} z_j`):

- ``ce``: cross-entropy;
- ``margin``: :math:`-m(z)` (Carlini-Wagner; the DLR loss needs three classes, this is its
  two-class form up to scale, which sign steps ignore);
- ``evidence``: :math:`-m(\tilde z)`, :math:`\tilde z` the logical layer applied to the affine
  layer's evidence *before* its rectifier, so that features that are off still pull;
- ``feature``: :math:`-\sum_k e_{y,k}`, pushing down the pre-rectifier evidence of every posed
  affine feature in the true class's own block.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pellucid.errors import InvalidInputError
from pellucid.models.inference import attack_mode, predict_logits, predict_margins
from pellucid.robust.apgd import Objective, apgd_objective
from pellucid.robust.attacks import AttackRun, check_eps, within_budget
from pellucid.robust.budgets import BUDGETS, AdaptiveBudget
from pellucid.robust.raysearch import other_class_images, ray_search
from pellucid.robust.square import square_native
from pellucid.robust.surrogate import (LayerSurrogates, SurrogateTemperatures, has_surrogates,
                                       is_whitebox, surrogate_gradients, whitebox_parts)

__all__ = ["LOSSES", "AdaptiveBudget", "adaptive_cascade", "decision_margin", "load_transfer_source",
           "surrogate_objective", "transfer_objective"]

_APGD_BATCH = 256


# --- losses -------------------------------------------------------------------------------------

def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - other


def decision_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """:math:`z_y - \\max_{j \\ne y} z_j` with ties settled by the argmax: ``> 0`` exactly where the
    prediction is ``y`` (as :func:`pellucid.models.inference.predict_margins`)."""
    m = _margin(logits.detach(), y)
    return torch.where(logits.argmax(1) == y, m.clamp_min(torch.finfo(m.dtype).tiny), m.clamp_max(0))


def _ce(model, parts, y, surrogates):
    return F.cross_entropy(parts["logits"], y, reduction="none")


def _margin_loss(model, parts, y, surrogates):
    return -_margin(parts["logits"], y)


def _evidence_loss(model, parts, y, surrogates):
    return -_margin(surrogates.layer(model.logical, parts["affine_pre"]), y)


def _feature_loss(model, parts, y, surrogates):
    evidence = parts["affine_pre"].view(len(y), model.logical.n_classes, -1)  # (B, C, block)
    return -evidence[torch.arange(len(y), device=y.device), y].sum(1)


# name -> (loss(model, parts, y, surrogates) -> (B,), needs the white-box network's layers)
LOSSES: dict[str, tuple[Callable, bool]] = {"ce": (_ce, False), "margin": (_margin_loss, False),
                                            "evidence": (_evidence_loss, True),
                                            "feature": (_feature_loss, True)}


def surrogate_objective(model: nn.Module, loss: str, temperature: float) -> Objective:
    """``(x, y) -> (loss, margin)``: ``loss`` (:data:`LOSSES`) through the surrogate gradients at
    ``temperature``, the margin (:func:`decision_margin`) of the exact forward pass."""
    function, needs_whitebox = LOSSES[loss]
    surrogates = LayerSurrogates(SurrogateTemperatures.of(temperature))
    whitebox = is_whitebox(model)
    if needs_whitebox and not whitebox:
        raise InvalidInputError(f"the {loss} loss needs the white-box network's layers")

    def objective(x: torch.Tensor, y: torch.Tensor):
        if whitebox:
            parts = whitebox_parts(model, x, surrogates)
        elif has_surrogates(model):
            with surrogate_gradients(model, temperature):
                parts = {"logits": model(x)}
        else:
            parts = {"logits": model(x)}
        return function(model, parts, y, surrogates), decision_margin(parts["logits"], y)

    return objective


def transfer_objective(source: Callable[[torch.Tensor], torch.Tensor], model: nn.Module) -> Objective:
    """``(x, y) -> (cross-entropy of source(x), margin of model(x))``: gradients from ``source``,
    success judged on ``model``."""
    def objective(x: torch.Tensor, y: torch.Tensor):
        with torch.no_grad():
            m = decision_margin(model(x.detach()), y)
        return F.cross_entropy(source(x), y, reduction="none"), m

    return objective


def load_transfer_source(path: str | Path, model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The model in the directory ``path``, on ``x``'s device and dtype, in eval mode; it must
    have as many outputs as ``model``."""
    from pellucid.models.checkpoint import load_model

    source, _ = load_model(path)
    source = source.to(x.device, x.dtype).eval()
    for p in source.parameters():
        p.requires_grad_(False)
    with torch.no_grad(), attack_mode(model):
        want, got = model(x[:1]).shape[-1], source(x[:1]).shape[-1]
    if want != got:
        raise InvalidInputError(f"--transfer-from {path}: the model has {got} outputs, the attacked "
                                f"one {want}")
    return source


# --- the cascade --------------------------------------------------------------------------------

@dataclass
class _Stage:
    name: str
    white_box: bool
    run: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]]  # (idx, start) -> (out, row)
    detail: dict = field(default_factory=dict)


@dataclass
class _Cascade:
    """The cascade's state: per image the lowest-margin in-budget point, whether it stands, and
    which stage broke it."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    eps: float
    value_range: tuple[float, float]
    adversarial: torch.Tensor
    margin: torch.Tensor
    robust: torch.Tensor
    broken_by: list
    log: Callable[[str], None] | None = None
    trace: Callable[[str, torch.Tensor, torch.Tensor], None] | None = None
    stages: list = field(default_factory=list)

    def check(self, name: str, out: torch.Tensor, idx: torch.Tensor) -> None:
        """Every output inside the eps-ball and the value range (else a bug: raises)."""
        lo, hi = self.value_range
        inside = within_budget(out - self.x[idx], self.eps, "linf")
        if not (bool(inside.all()) and float(out.min()) >= lo and float(out.max()) <= hi):
            raise AssertionError(f"adaptive stage {name} returned {int((~inside).sum())} outputs "
                                 f"outside the eps-ball or the value range [{lo}, {hi}]")

    def run(self, stage: _Stage) -> None:
        idx = torch.nonzero(self.robust).squeeze(1)
        start = time.perf_counter()
        row = {"attack": stage.name, **stage.detail, "white_box": stage.white_box,
               "attacked": len(idx), "broken": 0}
        if len(idx):
            out, extra = stage.run(idx, self.adversarial[idx])
            self.check(stage.name, out, idx)
            if self.trace is not None:
                self.trace(stage.name, idx.clone(), out)
            row.update(extra)
            row["broken"] = self.update(stage.name, idx, out)
        row["robust_accuracy_after"] = float(self.robust.float().mean())
        row["seconds"] = round(time.perf_counter() - start, 2)
        self.stages.append(row)
        if self.log is not None:
            self.log(f"adaptive {stage.name}: attacked {row['attacked']}, broke {row['broken']}, "
                     f"robust {row['robust_accuracy_after'] * 100:.2f} % ({row['seconds']:.1f} s)")

    def update(self, name: str, idx: torch.Tensor, out: torch.Tensor) -> int:
        m = predict_margins(self.model, out, self.y[idx], batch_size=2048)
        closer = m < self.margin[idx]
        self.adversarial[idx[closer]], self.margin[idx[closer]] = out[closer], m[closer]
        broken = idx[closer & (m <= 0)]
        self.robust[broken] = False
        for i in broken.tolist():
            self.broken_by[i] = name
        return len(broken)

    def info(self, budget: AdaptiveBudget) -> dict:
        counts: dict[str, int] = {}
        for name in self.broken_by:
            if name is not None:
                counts[name] = counts.get(name, 0) + 1
        return {"budget": "adaptive", "base_budget": budget.base_budget, "broken_by": counts,
                "broken_by_image": list(self.broken_by)}


def _surrogate_stage(cascade: _Cascade, loss: str, budget: AdaptiveBudget, generator,
                     batch_size: int, progress: bool) -> _Stage:
    def run(idx: torch.Tensor, start: torch.Tensor):
        out, best = start.clone(), torch.full((len(idx),), float("inf"), dtype=start.dtype,
                                              device=start.device)
        per_temperature: dict[str, int] = {}
        for r in range(budget.restarts):
            tau = budget.temperatures[r % len(budget.temperatures)]
            live = torch.nonzero(best > 0).squeeze(1)
            if not len(live):
                break
            points, m = apgd_objective(
                surrogate_objective(cascade.model, loss, tau), cascade.x[idx[live]], cascade.y[idx[live]],
                eps=cascade.eps, steps=budget.steps, start=start[live] if r == 0 else None,
                value_range=cascade.value_range, generator=generator, batch_size=batch_size,
                progress=progress, desc=f"surrogate APGD {loss} tau={tau:g}")
            better = m < best[live]
            out[live[better]], best[live[better]] = points[better], m[better]
            per_temperature[f"{tau:g}"] = per_temperature.get(f"{tau:g}", 0) + int((m <= 0).sum())
        return out, {"broken_per_temperature": per_temperature}

    detail = {"loss": loss, "steps": budget.steps, "restarts": budget.restarts,
              "temperatures": list(budget.temperatures)}
    return _Stage(f"surrogate-apgd-{loss}", True, run, detail)


def _transfer_stage(cascade: _Cascade, name: str, source: Callable, steps: int, white_box: bool,
                    generator, batch_size: int, progress: bool, detail: dict) -> _Stage:
    def run(idx: torch.Tensor, start: torch.Tensor):
        points, _ = apgd_objective(transfer_objective(source, cascade.model), cascade.x[idx],
                                   cascade.y[idx], eps=cascade.eps, steps=steps, start=start,
                                   value_range=cascade.value_range, generator=generator,
                                   batch_size=batch_size, progress=progress, desc=name)
        return points, {}

    return _Stage(name, white_box, run, {"steps": steps, **detail})


def _ray_stage(cascade: _Cascade, queries: int) -> _Stage:
    predictions = predict_logits(cascade.model, cascade.x).argmax(1)

    def run(idx: torch.Tensor, start: torch.Tensor):
        toward = other_class_images(cascade.x[idx], cascade.y[idx], cascade.x, cascade.y, predictions)
        points, radius = ray_search(cascade.model, cascade.x[idx], cascade.y[idx], toward,
                                    eps=cascade.eps, queries=queries, value_range=cascade.value_range)
        finite = radius[torch.isfinite(radius)]
        return points, {"median_radius": float(finite.median()) if len(finite) else None,
                        "_median_of": {"median_radius": finite.tolist()}}  # see merge_stage_rows

    return _Stage("ray-search", False, run, {"queries": queries})


def _square_stage(cascade: _Cascade, budget: AdaptiveBudget, generator, progress: bool) -> _Stage:
    def run(idx: torch.Tensor, start: torch.Tensor):
        done = square_native(cascade.model, cascade.x[idx], cascade.y[idx], eps=cascade.eps,
                             queries=budget.queries, restarts=budget.square_restarts,
                             value_range=cascade.value_range, generator=generator, progress=progress)
        return done.adversarial, {}

    return _Stage("square-final", False, run, {"queries": budget.queries,
                                               "restarts": budget.square_restarts})


def _adaptive_stages(cascade: _Cascade, budget: AdaptiveBudget, generator, batch_size: int,
                     progress: bool) -> list[_Stage]:
    whitebox = is_whitebox(cascade.model)
    stages = [_surrogate_stage(cascade, loss, budget, generator, batch_size, progress)
              for loss in budget.losses if whitebox or not LOSSES[loss][1]]
    if budget.transfer_steps and whitebox:
        smooth = LayerSurrogates(SurrogateTemperatures.of(budget.temperatures[0]), smooth_forward=True)
        stages.append(_transfer_stage(
            cascade, "smooth-transfer", lambda x: whitebox_parts(cascade.model, x, smooth)["logits"],
            budget.transfer_steps, True, generator, batch_size, progress,
            {"temperature": budget.temperatures[0]}))
    if budget.transfer_steps and budget.transfer_from is not None:
        source = load_transfer_source(budget.transfer_from, cascade.model, cascade.x)
        stages.append(_transfer_stage(cascade, "transfer", source, budget.transfer_steps, False,
                                      generator, batch_size, progress, {"source": budget.transfer_from}))
    if budget.decision_queries:
        stages.append(_ray_stage(cascade, budget.decision_queries))
    stages.append(_square_stage(cascade, budget, generator, progress))
    return stages


def adaptive_cascade(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                     budget: AdaptiveBudget | None = None, norm: str = "linf",
                     step_size: float | None = None, value_range: tuple[float, float] = (0.0, 1.0),
                     generator: torch.Generator | None = None, progress: bool = False,
                     batch_size: int | None = None, log: Callable[[str], None] | None = None,
                     trace: Callable[[str, torch.Tensor, torch.Tensor], None] | None = None) -> AttackRun:
    """Run the adaptive budget (module docstring) on ``(x, y)`` with the true labels.

    ``step_size`` goes to the base budget's APGD stages; ``batch_size`` to the base stages and
    the APGD stages (256 when ``None``). ``log(message)`` gets one line per stage;
    ``trace(stage, indices, outputs)`` (for tests and diagnostics) is called with every stage's
    attacked image indices and outputs. Returns the lowest-margin points, one log row per stage
    (base stages first) and ``info``: the budget, the count of images each stage broke
    (``broken_by``; ``"clean"``: misclassified without attack) and the stage per image.
    """
    from pellucid.robust.autoattack import run_stages

    budget = budget or AdaptiveBudget()
    if not isinstance(budget, AdaptiveBudget):
        raise InvalidInputError(f"budget must be an AdaptiveBudget, got {type(budget).__name__}")
    if norm != "linf":
        raise InvalidInputError(f"the adaptive budget is an L-inf budget; got norm {norm!r}")
    check_eps(eps)
    if budget.transfer_from is not None and budget.transfer_steps:
        load_transfer_source(budget.transfer_from, model, x)  # a bad directory fails before any work
    with attack_mode(model):
        base = run_stages(model, x, y, BUDGETS[budget.base_budget], eps=eps, norm=norm, step_size=step_size,
                          value_range=value_range, generator=generator, progress=progress,
                          batch_size=batch_size, log=log, name=f"adaptive/{budget.base_budget}")
        names = [s.attack for s in BUDGETS[budget.base_budget]]
        broken_by = [None if at < 0 else names[at] for at in base.broken_at.tolist()]
        for i in torch.nonzero(base.margin <= 0).squeeze(1).tolist():
            broken_by[i] = broken_by[i] or "clean"
        cascade = _Cascade(model, x, y, eps, value_range, base.adversarial, base.margin, base.robust,
                           broken_by, log, trace, list(base.stages))
        cascade.check("base", base.adversarial, torch.arange(len(x), device=x.device))
        for stage in _adaptive_stages(cascade, budget, generator, batch_size or _APGD_BATCH, progress):
            cascade.run(stage)
    return AttackRun(cascade.adversarial, cascade.stages, cascade.info(budget))
