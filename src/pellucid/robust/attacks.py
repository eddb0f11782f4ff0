"""Tensor-native, batched gradient attacks (PGD in L-inf and L2, FGSM) and the attack registry.

Every attack has the signature ``attack(model, x, y, *, eps, ...) -> x_adv`` on inputs in their
natural range; the model is put in eval mode for the duration (and restored). Losses are summed
over the batch so each image's gradient is independent of its batch-mates.
"""

from __future__ import annotations

import contextlib
import numbers
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pellucid._registry import Registry
from pellucid.data.validation import check_labels, check_model_input
from pellucid.errors import InvalidInputError

Attack = Callable[..., "torch.Tensor | AttackRun"]
ATTACKS: Registry[Attack] = Registry("attack")

# An output counts as inside the eps-ball up to this relative slack (float32 rounding of x + delta).
BUDGET_RTOL = 1e-4


@dataclass
class AttackRun:
    """What an attack returns: adversarial inputs, and for ensembles a log row per stage."""

    adversarial: torch.Tensor
    stages: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


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


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode; restore each submodule's previous mode on exit, even on errors."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y, reduction="sum")
        # allow_unused: a model whose output ignores its input has a zero gradient, not an error
        (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def _check(eps: float, steps: int = 1) -> None:
    check_eps(eps)
    if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or steps < 1:
        raise InvalidInputError(f"steps must be an int >= 1, got {steps!r}")


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
    with torch.no_grad(), eval_mode(model):
        out = model(x[:1])
    n_classes = out.shape[-1] if isinstance(out, torch.Tensor) and out.dim() == 2 else None
    return check_labels(y, n=x.shape[0], n_classes=n_classes)


@ATTACKS.register("pgd", "projected gradient descent (Madry et al.), L-inf or L2, random start")
def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float | None = None,
        steps: int = 40, norm: str = "linf", random_start: bool = True,
        value_range: tuple[float, float] = (0.0, 1.0), generator: torch.Generator | None = None,
        batch_size: int = 1024, progress: bool = False) -> torch.Tensor:
    r"""PGD maximising cross-entropy inside the ``norm`` ball of radius ``eps`` around ``x``.

    L-inf: :math:`x \leftarrow \Pi(x + \alpha\,\mathrm{sign}(\nabla_x \mathcal L))`; L2:
    :math:`x \leftarrow \Pi(x + \alpha\,\nabla_x \mathcal L / \|\nabla_x \mathcal L\|_2)`; :math:`\Pi`
    projects onto the ball and ``value_range``. Random start: uniform in the ball. Default step
    ``alpha = eps / 3`` (the paper's 0.1 at eps 0.3). Runs in batches of ``batch_size``.
    """
    _check(eps, steps)
    if norm not in ("linf", "l2"):
        raise InvalidInputError(f"norm must be 'linf' or 'l2', got {norm!r}")
    y = check_attack_inputs(model, x, y)
    alpha = eps / 3 if step_size is None else step_size
    lo, hi = value_range
    out = []
    bar = tqdm(total=len(x) * steps, desc=f"PGD-{steps}", unit="img-step", leave=False,
               disable=None if progress else True, file=sys.stderr)  # None: off when not a TTY
    with eval_mode(model), bar:
        for x0, yb in zip(x.split(batch_size), y.split(batch_size)):
            x0 = x0.detach()
            if random_start and eps > 0:
                if norm == "linf":
                    noise = torch.rand(x0.shape, generator=generator, dtype=x0.dtype) * 2 - 1
                    delta = eps * noise.to(x0.device)
                else:  # uniform in the L2 ball: random direction, radius eps * U^(1/d)
                    d = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
                    u = torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype).to(x0.device)
                    r = eps * u.pow(1.0 / x0[0].numel()).view(-1, *([1] * (x0.dim() - 1)))
                    delta = d / _flat_norm(d) * r
                xa = (x0 + delta).clamp(lo, hi)
            else:
                xa = x0.clone()
            for _ in range(steps):
                g = _input_grad(model, xa, yb)
                if norm == "linf":
                    xa = xa + alpha * g.sign()
                    xa = torch.min(torch.max(xa, x0 - eps), x0 + eps)
                else:
                    xa = xa + alpha * g / _flat_norm(g)
                    delta = xa - x0
                    xa = x0 + delta * (eps / _flat_norm(delta)).clamp(max=1.0)
                xa = xa.clamp(lo, hi).detach()
                bar.update(len(x0))
            out.append(xa)
    return torch.cat(out)


@ATTACKS.register("fgsm", "fast gradient sign method (one L-inf step of size eps)")
def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "linf",
         value_range: tuple[float, float] = (0.0, 1.0), batch_size: int = 1024, **_: object) -> torch.Tensor:
    r""":math:`x' = \Pi_{[lo, hi]}(x + \epsilon\,\mathrm{sign}(\nabla_x \mathcal L))` (L-inf only)."""
    _check(eps)
    if norm != "linf":
        raise InvalidInputError(f"fgsm is an L-inf attack; got norm {norm!r} (use pgd for l2)")
    y = check_attack_inputs(model, x, y)
    with eval_mode(model):
        out = [(xb + eps * _input_grad(model, xb, yb).sign()).clamp(*value_range).detach()
               for xb, yb in zip(x.split(batch_size), y.split(batch_size))]
    return torch.cat(out)


def run_attack(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs) -> AttackRun:
    """Run the registered attack ``name`` (see :data:`ATTACKS`) with the true labels ``y``."""
    attack = ATTACKS.get(name)
    y = check_attack_inputs(model, x, y)
    start = time.perf_counter()
    out = attack(model, x, y, **kwargs)
    if isinstance(out, AttackRun):
        return out
    return AttackRun(out, [{"attack": name, "attacked": len(x),
                            "seconds": round(time.perf_counter() - start, 2)}])
