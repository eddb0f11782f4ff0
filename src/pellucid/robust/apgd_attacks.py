r"""pellucid's own AutoAttack components (Croce & Hein 2020) on the native APGD core, L-inf.

Three registered attacks ascend a loss of the logits :math:`z` with
:func:`pellucid.robust.apgd.apgd_objective` (step :math:`2\epsilon` halved at APGD's
checkpoints, momentum 0.75; an image leaves the batch as soon as the model misclassifies it;
per image the visited point of lowest margin :math:`z_y - \max_{j \ne y} z_j` is returned, always
inside the eps-ball and the value range):

- ``apgd-ce-native``: untargeted, cross-entropy :math:`-\log \mathrm{softmax}(z)_y`;
- ``apgd-dlr-native``: untargeted, the difference of logits ratio (:func:`dlr_loss`)

  .. math:: \mathrm{DLR}(z, y) = -\frac{z_y - \max_{i \ne y} z_i}{z_{\pi_1} - z_{\pi_3} + 10^{-12}},

  :math:`\pi` the classes sorted by decreasing logit. It needs three classes; for a two-class
  model it is the margin loss :math:`-(z_y - z_{1-y})`, DLR's numerator (there is no
  :math:`z_{\pi_3}`; ART instead appends a constant logit of -100, which makes the denominator
  :math:`z_{\pi_1} + 100`);
- ``apgd-t-native``: targeted, one run per target class :math:`t` among the
  ``n_target_classes`` (default 9, at most classes - 1) highest non-true logits of the *clean*
  image, in decreasing order, each run on the images no earlier run broke, with the targeted DLR
  loss (:func:`targeted_dlr_loss`)

  .. math:: \mathrm{DLR}_t(z, y) = -\frac{z_y - z_t}{z_{\pi_1} - (z_{\pi_3} + z_{\pi_4}) / 2 + 10^{-12}}

  (four classes or more; with two or three it is the plain margin :math:`z_t - z_y`). An image is
  broken when the model misclassifies it, as whichever class.

Every run starts at a uniform random point of the eps-ball (``torch.rand`` from ``generator``,
on the CPU, then moved to the images' device and dtype; clipped to the value range), as the
reference implementation starts APGD at a random point of the ball; ``restarts`` > 1 runs again
from new random points on the images still standing. Images the model already misclassifies are
returned unchanged, without any attack step. The reference "standard" AutoAttack also runs FAB-T:
pellucid's is ``fab-t-native`` (:mod:`pellucid.robust.fab`). Of the budgets
(:data:`pellucid.robust.budgets.BUDGETS`), ``"native"`` has no FAB-T stage and
``"native-standard"`` runs APGD-CE, APGD-T, FAB-T and Square in the reference order.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from pellucid.errors import ConfigError, InvalidInputError
from pellucid.models.inference import attack_mode, margin, predict_logits
from pellucid.robust.apgd import Objective, apgd_objective
from pellucid.robust.attacks import AttackRun, check_attack_inputs, check_eps, check_options, register_attack
from pellucid.robust.options import APGDNativeOptions, APGDTargetedOptions, AttackOptions

__all__ = ["APGDNativeOptions", "APGDTargetedOptions", "apgd_ce_native", "apgd_dlr_native",
           "apgd_t_native", "dlr_loss", "target_classes", "targeted_dlr_loss"]

_TINY = 1e-12  # keeps DLR's denominator positive where the top logits tie


# --- losses ---------------------------------------------------------------------------------------

def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Per image :math:`-(z_y - \max_{i \ne y} z_i) / (z_{\pi_1} - z_{\pi_3} + 10^{-12})`,
    :math:`\pi` the classes by decreasing logit; with two classes :math:`-(z_y - z_{1-y})`
    (DLR's numerator: there is no :math:`z_{\pi_3}`). ``logits`` ``(B, K)``, ``y`` ``(B,)``."""
    numerator = -margin(logits, y)
    if logits.shape[1] < 3:
        return numerator
    top = logits.topk(3, dim=1).values
    return numerator / (top[:, 0] - top[:, 2] + _TINY)


def targeted_dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Per image :math:`-(z_y - z_t) / (z_{\pi_1} - (z_{\pi_3} + z_{\pi_4}) / 2 + 10^{-12})`,
    :math:`t` = ``target``; with fewer than four classes the plain margin :math:`z_t - z_y`."""
    pick = lambda c: logits.gather(1, c[:, None]).squeeze(1)  # noqa: E731
    numerator = pick(target) - pick(y)
    if logits.shape[1] < 4:
        return numerator
    top = logits.topk(4, dim=1).values
    return numerator / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + _TINY)


def target_classes(logits: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor:
    """``(B, min(n, K - 1))``: per image the classes other than ``y`` by decreasing logit."""
    n = min(n, logits.shape[1] - 1)
    others = logits.detach().scatter(1, y[:, None], float("-inf"))
    return others.topk(n, dim=1).indices


def _decision_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """:math:`z_y - \\max_{j \\ne y} z_j`, ties settled by the argmax (``> 0`` exactly where the
    prediction is ``y``), without gradient."""
    logits = logits.detach()
    m = margin(logits, y)
    return torch.where(logits.argmax(1) == y, m.clamp_min(torch.finfo(m.dtype).tiny), m.clamp_max(0))


def _untargeted(model: nn.Module, loss) -> Objective:
    def objective(x: torch.Tensor, y: torch.Tensor):
        z = model(x)
        return loss(z, y), _decision_margin(z, y)

    return objective


def _targeted(model: nn.Module) -> Objective:
    # the labels travel as (B, 2) rows [y, t], so that the target follows its image when APGD
    # drops broken images from the batch
    def objective(x: torch.Tensor, yt: torch.Tensor):
        z = model(x)
        y, t = yt[:, 0], yt[:, 1]
        return targeted_dlr_loss(z, y, t), _decision_margin(z, y)

    return objective


# --- attacks --------------------------------------------------------------------------------------

def _prepare(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
             options: type[AttackOptions], values: dict) -> torch.Tensor | None:
    """Check everything before any work; ``None`` for an empty batch, else ``y`` as int64."""
    check_eps(eps)
    check_options(name, options, values)
    if norm != "linf":
        raise ConfigError(f"{name} is an L-inf attack; got norm {norm!r} (use norm='linf', --norm linf)")
    if math.isinf(float(eps)):
        raise InvalidInputError(f"{name}: eps must be finite (APGD starts with a step of 2 eps)")
    if isinstance(x, torch.Tensor) and x.dim() >= 2 and x.shape[0] == 0:
        return None
    return check_attack_inputs(model, x, y)


def _apgd_untargeted(name: str, loss, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                     eps: float, norm: str, steps: int, restarts: int,
                     value_range: tuple[float, float], generator: torch.Generator | None,
                     batch_size: int, progress: bool) -> torch.Tensor:
    y = _prepare(name, model, x, y, eps, norm, APGDNativeOptions,
                 {"steps": steps, "restarts": restarts})
    if y is None:
        return x.detach().clone()
    x = x.detach()
    out = x.clone()
    with attack_mode(model):
        # only the images the model gets right are attacked (the others are broken already)
        idx = torch.nonzero(_decision_margin(predict_logits(model, x, batch_size), y) > 0).squeeze(1)
        if len(idx):
            out[idx], _ = apgd_objective(_untargeted(model, loss), x[idx], y[idx], eps=float(eps),
                                         steps=steps, restarts=restarts, value_range=value_range,
                                         generator=generator, batch_size=batch_size,
                                         progress=progress, desc=name)
    return out


def _untargeted_attack(name: str, loss, summary: str, doc: str):
    """Register ``name``: untargeted APGD on ``loss(logits, y)`` with :class:`APGDNativeOptions`."""
    def attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
               norm: str = "linf", steps: int = APGDNativeOptions.steps,
               restarts: int = APGDNativeOptions.restarts,
               value_range: tuple[float, float] = (0.0, 1.0),
               generator: torch.Generator | None = None, batch_size: int = 1024,
               progress: bool = False) -> torch.Tensor:
        return _apgd_untargeted(name, loss, model, x, y, eps=eps, norm=norm, steps=steps,
                                restarts=restarts, value_range=value_range, generator=generator,
                                batch_size=batch_size, progress=progress)

    attack.__name__ = attack.__qualname__ = name.replace("-", "_")
    attack.__doc__ = doc
    return register_attack(name, APGDNativeOptions, summary)(attack)


apgd_ce_native = _untargeted_attack(
    "apgd-ce-native", lambda z, t: F.cross_entropy(z, t, reduction="none"),
    "AutoPGD on cross-entropy, pellucid's implementation (L-inf), 100 steps",
    r"""Untargeted APGD on :math:`\mathrm{CE}(z, y) = -\log \mathrm{softmax}(z)_y` (see the module
    docstring); returns the adversarial inputs.""")

apgd_dlr_native = _untargeted_attack(
    "apgd-dlr-native", dlr_loss,
    "AutoPGD on the DLR loss, pellucid's implementation (L-inf), 100 steps",
    r"""Untargeted APGD on :func:`dlr_loss`,
    :math:`-(z_y - \max_{i \ne y} z_i) / (z_{\pi_1} - z_{\pi_3} + 10^{-12})`; for a two-class
    model the margin loss :math:`-(z_y - z_{1-y})`. Returns the adversarial inputs.""")


@register_attack("apgd-t-native", APGDTargetedOptions,
                 "targeted AutoPGD on the targeted DLR loss, pellucid's implementation (L-inf), "
                 "9 targets x 100 steps")
def apgd_t_native(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                  norm: str = "linf", steps: int = APGDTargetedOptions.steps,
                  restarts: int = APGDTargetedOptions.restarts,
                  n_target_classes: int = APGDTargetedOptions.n_target_classes,
                  value_range: tuple[float, float] = (0.0, 1.0),
                  generator: torch.Generator | None = None, batch_size: int = 1024,
                  progress: bool = False) -> AttackRun:
    r"""APGD-T: for the :math:`k`-th highest non-true clean logit :math:`t_k`,
    :math:`k = 1 .. \min(n, K - 1)` in turn, APGD on :func:`targeted_dlr_loss`
    :math:`-(z_y - z_{t_k}) / (z_{\pi_1} - (z_{\pi_3} + z_{\pi_4}) / 2 + 10^{-12})` (fewer than
    four classes: :math:`z_{t_k} - z_y`) on the images no earlier target broke. Success is any
    misclassification. Returns the adversarial inputs (per image the lowest-margin point of all
    its runs) and one log row with the images broken per target rank."""
    start = time.perf_counter()
    y = _prepare("apgd-t-native", model, x, y, eps, norm, APGDTargetedOptions,
                 {"steps": steps, "restarts": restarts, "n_target_classes": n_target_classes})
    row = {"attack": "apgd-t-native", "attacked": len(x), "broken_per_target": {}}
    if y is None:
        return AttackRun(x.detach().clone(), [{**row, "seconds": 0.0}])
    x = x.detach()
    out = x.clone()
    with attack_mode(model):
        clean = predict_logits(model, x, batch_size)
        best = _decision_margin(clean, y)
        targets = target_classes(clean, y, n_target_classes)
        objective = _targeted(model)
        for rank in range(targets.shape[1]):
            idx = torch.nonzero(best > 0).squeeze(1)  # robust so far: correct and not yet broken
            if not len(idx):
                break
            points, m = apgd_objective(objective, x[idx], torch.stack([y[idx], targets[idx, rank]], 1),
                                       eps=float(eps), steps=steps, restarts=restarts,
                                       value_range=value_range, generator=generator,
                                       batch_size=batch_size, progress=progress,
                                       desc=f"apgd-t-native {rank + 1}/{targets.shape[1]}")
            closer = m < best[idx]
            out[idx[closer]], best[idx[closer]] = points[closer], m[closer]
            row["broken_per_target"][str(rank + 1)] = int((m <= 0).sum())
    row.update(targets=int(targets.shape[1]), seconds=round(time.perf_counter() - start, 2))
    return AttackRun(out, [row])
