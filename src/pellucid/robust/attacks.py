"""Tensor-native, batched gradient attacks (PGD and Adam-PGD in L-inf and L2, L2 basic iterative,
FGSM, FGM) and the attack registry.

The registry :data:`ATTACKS` maps a name to an :class:`Attack`: a function and the dataclass of
its own options (:class:`AttackOptions`, e.g. :class:`PGDOptions`: ``steps``, ``step_size``,
``random_start``). The registry, the options dataclasses and the declaration of every attack
pellucid ships live in torch-free modules (:mod:`pellucid.robust.catalogue`,
:mod:`pellucid.robust.options`), so that they can be listed without importing the attacks. Calling it, ``ATTACKS.get(name)(model, x, y, eps=..., **arguments)``, always
returns an :class:`AttackRun`. Two kinds of keyword arguments are accepted:

- the arguments common to every attack, :data:`COMMON_ARGS` (``eps``, ``norm``, ``value_range``,
  ``generator``, ``progress``, ``batch_size``, ``log``): the threat model and how to run, not how
  the attack searches. They are not options: an attack that has no use for one ignores it (FGSM
  is deterministic and ignores ``generator``; only ensembles ``log``; unbounded attacks such as
  DeepFool ignore ``eps`` and ``norm``, and the evaluator keeps only outputs inside the budget);
  an attack that cannot work in a given ``norm`` raises;
- the attack's own options, the fields of its options dataclass, checked when the dataclass is
  built: an unknown option or an out-of-range value raises :class:`InvalidInputError` naming the
  attack and the option. ``pellucid evaluate`` makes its flags (``--steps``, ``--queries``, ...)
  from the union of these fields, and records the options used with their defaults filled in.

Every attack works on inputs in their natural range and puts the model in eval mode for the
duration (and restores it). Losses are summed over the batch so each image's gradient is
independent of its batch-mates.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pellucid._device import draw_device
from pellucid.data.validation import check_labels, check_model_input
from pellucid.errors import InvalidInputError
from pellucid.models.inference import attack_mode, eval_mode  # noqa: F401 (both public here)
# The registry, the options and their declarations import no torch (pellucid evaluate --help).
from pellucid.robust.catalogue import ATTACKS
from pellucid.robust.options import (COMMON_ARGS, AdamPGDOptions, AttackOptions, FGMOptions,  # noqa: F401
                                     FGSMOptions, L2BIMOptions, PGDOptions, attack_option,
                                     check_options, default_text, option_values, restarts_option,
                                     step_size_option, steps_option)

# An output counts as inside the eps-ball up to this relative slack (float32 rounding of x + delta).
BUDGET_RTOL = 1e-4


@dataclass
class AttackRun:
    """What an attack returns: adversarial inputs, and a log row per stage (one for a single
    attack, one per attack of an ensemble)."""

    adversarial: torch.Tensor
    stages: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


class Attack:
    """A registered attack: ``function`` and the dataclass of its options.

    ``function(model, x, y, *, ...)`` takes keyword-only arguments: every field of ``options``
    (with the dataclass's defaults, if any) and those of :data:`COMMON_ARGS` it uses, nothing else;
    it returns the adversarial inputs or an :class:`AttackRun`. Calling the :class:`Attack` checks
    the options and the inputs before any work and always returns an :class:`AttackRun`.
    """

    def __init__(self, name: str, function: Callable[..., torch.Tensor | AttackRun],
                 options: type[AttackOptions]) -> None:
        self.name, self.function, self.options = name, function, options
        self.fields = tuple(dataclasses.fields(options))
        self.option_names = tuple(f.name for f in self.fields)
        params = list(inspect.signature(function).parameters.values())
        keywords = {p.name: p for p in params if p.kind is p.KEYWORD_ONLY}
        wrong = [p.name for p in params[3:] if p.kind is not p.KEYWORD_ONLY]
        missing = [n for n in self.option_names if n not in keywords]
        extra = [n for n in keywords if n not in self.option_names and n not in COMMON_ARGS]
        differ = [f.name for f in self.fields if f.name in keywords
                  and keywords[f.name].default not in (inspect.Parameter.empty, f.default)]
        if len(params) < 3 or wrong or missing or extra or differ:
            raise TypeError(f"attack {name!r}: {function.__qualname__} must take (model, x, y, *, "
                            f"options of {options.__name__}, common arguments); positional or "
                            f"**: {wrong}, options missing: {missing}, unknown: {extra}, defaults "
                            f"differing from the options': {differ}")
        self.uses = tuple(n for n in COMMON_ARGS if n in keywords)  # the common arguments it reads

    def __repr__(self) -> str:
        return f"Attack({self.name!r}, options={self.options.__name__})"

    def check_options(self, values: Mapping[str, Any] | AttackOptions | None = None) -> AttackOptions:
        """See :func:`check_options`."""
        return check_options(self.name, self.options, values)

    def split(self, kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], AttackOptions]:
        """``kwargs`` as (common arguments, checked options)."""
        common = {k: v for k, v in kwargs.items() if k in COMMON_ARGS}
        return common, self.check_options({k: v for k, v in kwargs.items() if k not in COMMON_ARGS})

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> AttackRun:
        """Attack ``x`` with the true labels ``y``; ``kwargs``: common arguments and options."""
        common, options = self.split(kwargs)
        if "eps" in common:
            check_eps(common["eps"])
        y = check_attack_inputs(model, x, y)
        start = time.perf_counter()
        out = self.function(model, x, y, **{k: v for k, v in common.items() if k in self.uses},
                            **option_values(options))
        if isinstance(out, AttackRun):
            return out
        return AttackRun(out, [{"attack": self.name, "attacked": len(x),
                                "seconds": round(time.perf_counter() - start, 2)}])


def register_attack(name: str, options: type[AttackOptions], summary: str = ""):
    """Decorator: register ``function`` under ``name`` with its ``options`` dataclass (see
    :class:`Attack`); returns ``function`` unchanged."""
    def add(function: Callable) -> Callable:
        doc = summary or (function.__doc__ or "").strip().split("\n")[0]
        ATTACKS.register(name, doc)(Attack(name, function, options))
        return function

    return add


def perturbation_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-image ``||delta||`` for ``norm`` in {"linf", "l2"}: shape ``(B,)``."""
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(1) if flat.shape[1] else flat.new_zeros(len(flat))
    if norm == "l2":
        return flat.norm(dim=1)
    raise InvalidInputError(f"norm must be 'linf' or 'l2', got {norm!r}")


def within_budget(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Per-image: is the perturbation inside the ``norm`` ball of radius ``eps``?"""
    return perturbation_norm(delta, norm) * (1 - BUDGET_RTOL) <= eps


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y, reduction="sum")
        # allow_unused: a model whose output ignores its input has a zero gradient, not an error
        (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def check_eps(eps: float, name: str = "eps") -> None:
    """Raise :class:`InvalidInputError` unless ``eps`` is a number >= 0 (inf: unbounded)."""
    try:
        ok = not isinstance(eps, (str, bytes, bool)) and float(eps) >= 0  # NaN compares False
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of several values
        ok = False
    if not ok:
        raise InvalidInputError(f"{name} must be a number >= 0, got {eps!r}")


def check_attack_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y`` as int64 after checking the attack's inputs, before any work is done.

    ``x``: a non-empty floating batch with the dtype and device of the model's parameters;
    ``y``: integer labels ``(B,)`` in ``0..K-1``, ``K`` the number of the model's outputs (from one
    forward pass on one image in eval mode).
    """
    check_model_input(model, x)
    if x.dim() < 2 or x.shape[0] == 0:
        raise InvalidInputError(f"images must be a non-empty batch (B, ...), got shape {tuple(x.shape)}")
    y = check_labels(y, n=x.shape[0], device=x.device)  # shape and dtype before the forward pass
    with torch.no_grad(), attack_mode(model):
        out = model(x[:1])
    n_classes = out.shape[-1] if isinstance(out, torch.Tensor) and out.dim() == 2 else None
    return check_labels(y, n=x.shape[0], n_classes=n_classes)


def _random_delta(x0: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """A uniform sample of the ``norm`` ball of radius ``eps`` per image (PGD's random start)."""
    if norm == "linf":
        noise = torch.rand(x0.shape, generator=generator, dtype=x0.dtype, device=draw_device(generator)) * 2 - 1
        return eps * noise.to(x0.device)
    # uniform in the L2 ball: random direction, radius eps * U^(1/d)
    d = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=draw_device(generator)).to(x0.device)
    u = torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype, device=draw_device(generator)).to(x0.device)
    r = eps * u.pow(1.0 / x0[0].numel()).view(-1, *([1] * (x0.dim() - 1)))
    return d / _flat_norm(d) * r


def _project(xa: torch.Tensor, x0: torch.Tensor, eps: float, norm: str, lo: float, hi: float) -> torch.Tensor:
    """``xa`` projected onto the ``norm`` ball of radius ``eps`` around ``x0``, then onto ``[lo, hi]``."""
    if norm == "linf":
        xa = torch.min(torch.max(xa, x0 - eps), x0 + eps)
    else:
        delta = xa - x0
        xa = x0 + delta * (eps / _flat_norm(delta)).clamp(max=1.0)
    return xa.clamp(lo, hi).detach()


# An ascent rule: called once per batch with its clean inputs, returns the step function
# ``input gradient -> step added to x`` (a fresh one per batch: it may keep state, e.g. Adam's moments).
AscentRule = Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def _gradient_ascent(alpha: float, norm: str) -> AscentRule:
    """PGD's step: ``alpha sign(g)`` (L-inf) or ``alpha g / ||g||_2`` (L2)."""
    if norm == "linf":
        return lambda x0: lambda g: alpha * g.sign()
    return lambda x0: lambda g: alpha * g / _flat_norm(g)


def _adam_ascent(alpha: float, norm: str, beta1: float = 0.9, beta2: float = 0.999,
                 tiny: float = 1e-8) -> AscentRule:
    r"""Adam's update of the normalised gradient ``n`` (``sign(g)`` or ``g / ||g||_2``), per coordinate:
    ``m = b1 m + (1 - b1) n``, ``v = b2 v + (1 - b2) n^2``, step ``alpha m^ / (sqrt(v^) + tiny)`` with
    the bias corrections ``m^ = m / (1 - b1^t)``, ``v^ = v / (1 - b2^t)`` (foolbox 3's Adam attacks)."""
    def start(x0: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        m, v, t = torch.zeros_like(x0), torch.zeros_like(x0), 0

        def step(g: torch.Tensor) -> torch.Tensor:
            nonlocal m, v, t
            n = g.sign() if norm == "linf" else g / _flat_norm(g)
            t += 1
            m = beta1 * m + (1 - beta1) * n
            v = beta2 * v + (1 - beta2) * n * n
            return alpha * (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + tiny)

        return step

    return start


def _iterative_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str,
                      steps: int, random_start: bool, ascent: AscentRule, value_range: tuple[float, float],
                      generator: torch.Generator | None, batch_size: int, progress: bool, desc: str) -> torch.Tensor:
    r"""The loop of the projected attacks: per batch, start at ``x`` (or uniformly in the ball), then
    ``steps`` times :math:`x \leftarrow \Pi(x + \mathrm{step}(\nabla_x \mathcal L))` (``step`` from
    ``ascent``, :math:`\Pi`: :func:`_project`). Inputs checked by the caller."""
    lo, hi = value_range
    out = []
    bar = tqdm(total=len(x) * steps, desc=desc, unit="img-step", leave=False,
               disable=None if progress else True, file=sys.stderr)  # None: off when not a TTY
    with attack_mode(model), bar:
        for x0, yb in zip(x.split(batch_size), y.split(batch_size)):
            x0 = x0.detach()
            if random_start and eps > 0:
                xa = (x0 + _random_delta(x0, eps, norm, generator)).clamp(lo, hi)
            else:
                xa = x0.clone()
            step = ascent(x0)
            for _ in range(steps):
                xa = _project(xa + step(_input_grad(model, xa, yb)), x0, eps, norm, lo, hi)
                bar.update(len(x0))
            out.append(xa)
    return torch.cat(out)


def _check_norm(attack: str, norm: str, allowed: tuple[str, ...] = ("linf", "l2")) -> None:
    if norm not in allowed:
        if len(allowed) == 1:
            raise InvalidInputError(f"{attack} is an {allowed[0].upper()} attack; got norm {norm!r} "
                                    f"(use norm={allowed[0]!r}, --norm {allowed[0]})")
        raise InvalidInputError(f"norm must be 'linf' or 'l2', got {norm!r}")


def _default_step(attack: str, eps: float, step_size: float | None, divisor: float) -> float:
    """``step_size``, or ``eps / divisor`` when it is None (an infinite eps needs an explicit step)."""
    if step_size is not None:
        return step_size
    if math.isinf(eps):
        raise InvalidInputError(f"{attack}: eps = inf needs an explicit step_size (the default is a "
                                f"fraction of eps)")
    return eps / divisor


@register_attack("pgd", PGDOptions, "projected gradient descent (Madry et al.), L-inf or L2, random start")
def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
        step_size: float | None = PGDOptions.step_size, steps: int = PGDOptions.steps,
        norm: str = "linf", random_start: bool = PGDOptions.random_start,
        value_range: tuple[float, float] = (0.0, 1.0), generator: torch.Generator | None = None,
        batch_size: int = 1024, progress: bool = False) -> torch.Tensor:
    r"""PGD maximising cross-entropy inside the ``norm`` ball of radius ``eps`` around ``x``.

    L-inf: :math:`x \leftarrow \Pi(x + \alpha\,\mathrm{sign}(\nabla_x \mathcal L))`; L2:
    :math:`x \leftarrow \Pi(x + \alpha\,\nabla_x \mathcal L / \|\nabla_x \mathcal L\|_2)`; :math:`\Pi`
    projects onto the ball and ``value_range``. Random start: uniform in the ball. Default step
    ``alpha = eps / 3`` (the paper's 0.1 at eps 0.3). Runs in batches of ``batch_size``.
    Returns the adversarial inputs; the registered ``"pgd"`` wraps them in an :class:`AttackRun`.
    """
    check_eps(eps)
    check_options("pgd", PGDOptions, {"steps": steps, "step_size": step_size, "random_start": random_start})
    _check_norm("pgd", norm)
    y = check_attack_inputs(model, x, y)
    alpha = eps / 3 if step_size is None else step_size
    return _iterative_attack(model, x, y, eps=eps, norm=norm, steps=steps, random_start=random_start,
                             ascent=_gradient_ascent(alpha, norm), value_range=value_range,
                             generator=generator, batch_size=batch_size, progress=progress,
                             desc=f"PGD-{steps}")


@register_attack("adam-pgd", AdamPGDOptions, "PGD whose step is Adam's update of the input gradient, L-inf or L2")
def adam_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
             step_size: float | None = AdamPGDOptions.step_size, steps: int = AdamPGDOptions.steps,
             norm: str = "linf", random_start: bool = AdamPGDOptions.random_start,
             value_range: tuple[float, float] = (0.0, 1.0), generator: torch.Generator | None = None,
             batch_size: int = 1024, progress: bool = False) -> torch.Tensor:
    r"""Adam-PGD (foolbox 3's ``LinfAdamPGD`` / ``L2AdamPGD``): PGD whose ascent direction is Adam's
    update of the normalised input gradient.

    With :math:`n_t = \mathrm{sign}(\nabla_x \mathcal L)` (L-inf) or
    :math:`\nabla_x \mathcal L / \|\nabla_x \mathcal L\|_2` (L2):
    :math:`m_t = \beta_1 m_{t-1} + (1 - \beta_1) n_t`, :math:`v_t = \beta_2 v_{t-1} + (1 - \beta_2) n_t^2`,
    :math:`x \leftarrow \Pi\big(x + \alpha\,\hat m_t / (\sqrt{\hat v_t} + 10^{-8})\big)` with
    :math:`\hat m_t = m_t / (1 - \beta_1^t)`, :math:`\hat v_t = v_t / (1 - \beta_2^t)`,
    :math:`\beta = (0.9, 0.999)`; :math:`\Pi` projects onto the ``norm`` ball and ``value_range``
    (as :func:`pgd`). The first step is :math:`\alpha\,n_1 / (|n_1| + 10^{-8})`, about
    :math:`\alpha\,\mathrm{sign}(\nabla_x \mathcal L)` in both norms. Default step
    ``alpha = eps / 3`` (L-inf) or ``eps / 40`` (L2: the step is per coordinate, foolbox's 0.025 eps).
    Moments are per image, so results do not depend on ``batch_size``.
    """
    check_eps(eps)
    check_options("adam-pgd", AdamPGDOptions, {"steps": steps, "step_size": step_size, "random_start": random_start})
    _check_norm("adam-pgd", norm)
    alpha = _default_step("adam-pgd", eps, step_size, 3 if norm == "linf" else 40)
    y = check_attack_inputs(model, x, y)
    return _iterative_attack(model, x, y, eps=eps, norm=norm, steps=steps, random_start=random_start,
                             ascent=_adam_ascent(alpha, norm), value_range=value_range,
                             generator=generator, batch_size=batch_size, progress=progress,
                             desc=f"Adam-PGD-{steps}")


@register_attack("l2-bim", L2BIMOptions, "L2 basic iterative method (L2 PGD starting at x)")
def l2_bim(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
           step_size: float | None = L2BIMOptions.step_size, steps: int = L2BIMOptions.steps,
           norm: str = "l2", value_range: tuple[float, float] = (0.0, 1.0),
           generator: torch.Generator | None = None, batch_size: int = 1024,
           progress: bool = False) -> torch.Tensor:
    r"""L2 basic iterative method (foolbox 3's ``L2BasicIterativeAttack``): :func:`pgd` in L2 without
    the random start, :math:`x_0 = x`,
    :math:`x \leftarrow \Pi(x + \alpha\,\nabla_x \mathcal L / \|\nabla_x \mathcal L\|_2)`.
    Defaults: 10 steps of ``alpha = eps / 5`` (foolbox's). Deterministic: ``generator`` is accepted,
    like by every attack, and not used.
    """
    check_eps(eps)
    check_options("l2-bim", L2BIMOptions, {"steps": steps, "step_size": step_size})
    _check_norm("l2-bim", norm, ("l2",))
    alpha = _default_step("l2-bim", eps, step_size, 5)
    y = check_attack_inputs(model, x, y)
    return _iterative_attack(model, x, y, eps=eps, norm="l2", steps=steps, random_start=False,
                             ascent=_gradient_ascent(alpha, "l2"), value_range=value_range,
                             generator=None, batch_size=batch_size, progress=progress, desc=f"L2-BIM-{steps}")


@register_attack("fgsm", FGSMOptions, "fast gradient sign method (one L-inf step of size eps)")
def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
         value_range: tuple[float, float] = (0.0, 1.0), generator: torch.Generator | None = None,
         batch_size: int = 1024) -> torch.Tensor:
    r""":math:`x' = \Pi_{[lo, hi]}(x + \epsilon\,\mathrm{sign}(\nabla_x \mathcal L))` (L-inf only).

    Deterministic: ``generator`` is accepted, like by every attack, and not used.
    """
    check_eps(eps)
    if norm != "linf":
        raise InvalidInputError(f"fgsm is an L-inf attack; got norm {norm!r} (use pgd for l2)")
    y = check_attack_inputs(model, x, y)
    with attack_mode(model):
        out = [(xb + eps * _input_grad(model, xb, yb).sign()).clamp(*value_range).detach()
               for xb, yb in zip(x.split(batch_size), y.split(batch_size))]
    return torch.cat(out)


@register_attack("fgm", FGMOptions, "fast gradient method (one L2 step of length eps)")
def fgm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "l2",
        value_range: tuple[float, float] = (0.0, 1.0), generator: torch.Generator | None = None,
        batch_size: int = 1024) -> torch.Tensor:
    r""":math:`x' = \Pi_{[lo, hi]}(x + \epsilon\,\nabla_x \mathcal L / \|\nabla_x \mathcal L\|_2)` (L2 only;
    foolbox 3's ``L2FastGradientAttack``). A zero gradient leaves ``x`` unchanged.

    Deterministic: ``generator`` is accepted, like by every attack, and not used.
    """
    check_eps(eps)
    _check_norm("fgm", norm, ("l2",))
    if math.isinf(eps):
        raise InvalidInputError("fgm: eps must be finite (its step is eps long)")
    y = check_attack_inputs(model, x, y)
    with attack_mode(model):
        out = []
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            g = _input_grad(model, xb, yb)
            out.append((xb + eps * g / _flat_norm(g)).clamp(*value_range).detach())
    return torch.cat(out)


def run_attack(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> AttackRun:
    """Run the registered attack ``name`` (see :data:`ATTACKS`) with the true labels ``y``;
    ``kwargs``: the common arguments (:data:`COMMON_ARGS`) and the attack's options."""
    return ATTACKS.get(name)(model, x, y, **kwargs)
