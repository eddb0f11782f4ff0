"""Adam and SGD with the arithmetic of ``torch.optim.Adam`` / ``torch.optim.SGD`` on CPU, bit for
bit, without ``torch.optim``.

Why not ``torch.optim.Adam`` itself: its methods are wrapped by ``torch._disable_dynamo``, which
imports ``torch._dynamo`` the first time one of them runs, for a compiler that training never
uses. Measured with torch 2.14.1 (CPython 3.11, 2 CPU cores; ``benchmarks/startup_costs.py
--only adam``): a fresh process imports torch and ``pellucid.models``, builds the white-box
network and back-propagates one batch; creating and stepping ``torch.optim.Adam`` then takes
0.81 s against 0.03 s for this class, and the whole process 2.44 s against 1.44 s (the extra
modules are also torn down at exit); medians of 7 processes each, alternating. So this class
saves 0.8-1.0 s on every ``pellucid train`` run.

The update below performs the same tensor operations in the same order as torch's single-tensor
implementation (``torch.optim.adam._single_tensor_adam``, the default for CPU tensors), and
``state_dict()`` has torch's layout, so checkpoints move freely between the two. With torch
2.14.1, two 2-epoch trainer runs gave the same weights and metrics, tensor for tensor, with either
optimizer. ``tests/test_optim.py`` compares both, bit for bit, and checks that ``torch._dynamo``
stays unimported.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["SGD", "Adam"]



class _Optimizer:
    """What Adam and SGD share: torch's parameter groups, numbering, ``zero_grad``, ``step`` and
    ``state_dict`` layout. A subclass names its hyperparameters (``DEFAULTS``), its per-parameter
    state (``STATE``), the torch flags it does not implement (``UNSUPPORTED``, which a loaded state
    dict must have off) and its update."""

    NAME = ""
    DEFAULTS: dict[str, Any] = {}
    STATE: tuple[str, ...] = ()
    UNSUPPORTED: tuple[str, ...] = ()

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], **settings: Any) -> None:
        params = list(params)
        if not params:
            raise ValueError(f"{self.NAME} got an empty parameter list")
        given = params if all(isinstance(g, dict) for g in params) else [{"params": params}]
        self.param_groups: list[dict[str, Any]] = []
        for g in given:
            group = {"params": list(g.get("params", ()))}
            if not group["params"] or any(not isinstance(p, torch.Tensor) or p.is_complex()
                                          for p in group["params"]):
                raise ValueError(f"{self.NAME} takes real tensors only, at least one per parameter group")
            self._set_hyperparameters(group, **{k: g.get(k, v) for k, v in settings.items()})
            self.param_groups.append(group)
        ids = [id(p) for p in self._params()]
        if len(set(ids)) != len(ids):
            raise ValueError("some parameters appear in more than one parameter group")
        self.state: dict[int, dict[str, torch.Tensor]] = {}

    def _params(self) -> list[torch.Tensor]:
        """All parameters in torch's numbering (group by group)."""
        return [p for group in self.param_groups for p in group["params"]]

    @staticmethod
    def _set_hyperparameters(group: dict[str, Any], **settings: Any) -> None:
        raise NotImplementedError

    def _update(self, i: int, p: torch.Tensor, group: dict[str, Any]) -> None:
        raise NotImplementedError

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._params():
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_()
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        i = 0
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise RuntimeError(f"{self.NAME} does not support sparse gradients")
                    self._update(i, p, group)
                i += 1

    def state_dict(self) -> dict[str, Any]:
        """torch's layout: ``{"state": {index: {...}}, "param_groups": [{..., "params": [0, ...]}, ...]}``."""
        groups, first = [], 0
        for group in self.param_groups:
            saved = {k: v for k, v in group.items() if k != "params"}
            saved.update({flag: False for flag in self.UNSUPPORTED}, foreach=None, fused=None,
                         params=list(range(first, first + len(group["params"]))))
            first += len(group["params"])
            groups.append(saved)
        return {"state": {i: dict(s) for i, s in self.state.items()}, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state dict from :meth:`state_dict` or from the equivalent ``torch.optim``
        class (keys this class does not use, such as a scheduler's ``initial_lr``, are ignored)."""
        groups = state_dict["param_groups"]
        theirs = [len(g["params"]) for g in groups]
        ours = [len(g["params"]) for g in self.param_groups]
        if theirs != ours:
            raise ValueError(f"the state dict has {theirs} parameters in its groups; this optimizer "
                             f"has {ours}")
        on = [flag for g in groups for flag in self.UNSUPPORTED if g.get(flag)]
        if on:
            raise ValueError(f"the state dict uses {self.NAME} options this class lacks: {', '.join(on)}")
        missing = [k for g in groups for k in self.DEFAULTS if k not in g]
        if missing:
            raise ValueError(f"the state dict is not {self.NAME}'s: its groups lack {', '.join(sorted(set(missing)))}")
        for group, saved in zip(self.param_groups, groups):
            self._set_hyperparameters(group, **{k: saved[k] for k in self.DEFAULTS})
        params = self._params()
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, saved in state_dict["state"].items():
            i = int(key)
            p = params[i]
            if set(saved) != set(self.STATE):
                raise ValueError(f"parameter {i}: unexpected {self.NAME} state {sorted(saved)}")
            state[i] = {}
            for name, value in saved.items():
                if name == "step":
                    state[i][name] = torch.as_tensor(value, dtype=_step_dtype()).clone()
                    continue
                if tuple(value.shape) != tuple(p.shape):
                    raise ValueError(f"parameter {i}: {name} has shape {tuple(value.shape)}, "
                                     f"the parameter {tuple(p.shape)}")
                state[i][name] = value.to(p.device, p.dtype, copy=True)
        self.state = state


class Adam(_Optimizer):
    r"""Adam (Kingma & Ba 2015) with L2 weight decay in the gradient (``torch.optim.Adam``, not AdamW).

    At step :math:`t`, for each parameter :math:`\theta` with gradient :math:`g`:
    :math:`g \leftarrow g + \lambda\theta`;
    :math:`m \leftarrow m + (1 - \beta_1)(g - m)`;
    :math:`v \leftarrow \beta_2 v + (1 - \beta_2) g^2`;
    :math:`\theta \leftarrow \theta - \frac{\text{lr}}{1 - \beta_1^t}\,
    \frac{m}{\sqrt{v} / \sqrt{1 - \beta_2^t} + \epsilon}`.
    Parameters whose ``grad`` is ``None`` are skipped and keep no state, as in torch.

    ``params`` is an iterable of tensors (one group) or, as in torch, of parameter groups
    ``{"params": [...], "lr": ...}`` whose missing settings take the keyword arguments' values.
    Parameters are numbered across the groups in order, as in torch's ``state_dict``.
    """

    NAME = "Adam"
    DEFAULTS = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
    STATE = ("step", "exp_avg", "exp_avg_sq")
    UNSUPPORTED = ("amsgrad", "maximize", "capturable", "differentiable", "decoupled_weight_decay")

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    @staticmethod
    def _set_hyperparameters(group: dict[str, Any], *, lr: float, betas: Iterable[float], eps: float,
                             weight_decay: float) -> None:
        beta1, beta2 = (float(b) for b in betas)
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"betas must lie in [0, 1), got {(beta1, beta2)}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        group.update(lr=float(lr), betas=(beta1, beta2), eps=float(eps), weight_decay=float(weight_decay))

    def _update(self, i: int, p: torch.Tensor, group: dict[str, Any]) -> None:
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        state = self.state.get(i)
        if state is None:  # torch: float32 step on the CPU, moments in the parameter's layout
            state = self.state[i] = {
                "step": torch.zeros((), dtype=_step_dtype()),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        state["step"] += 1
        grad = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        t = state["step"].item()
        bias_correction1 = 1 - beta1 ** t
        bias_correction2 = 1 - beta2 ** t
        denom = (exp_avg_sq.sqrt() / bias_correction2 ** 0.5).add_(eps)
        p.addcdiv_(exp_avg, denom, value=-(lr / bias_correction1))


class SGD(_Optimizer):
    r"""SGD with heavy-ball momentum and L2 weight decay (``torch.optim.SGD``, no dampening, no
    Nesterov), the optimiser of the CIFAR-10 ResNet protocols.

    For each parameter :math:`\theta` with gradient :math:`g`: :math:`g \leftarrow g + \lambda\theta`;
    :math:`b \leftarrow g` at the first step, else :math:`b \leftarrow \mu b + g`;
    :math:`\theta \leftarrow \theta - \text{lr}\, b` (:math:`\mu = 0`: no buffer, plain SGD).
    Same parameter groups and ``state_dict`` layout as ``torch.optim.SGD``.
    """

    NAME = "SGD"
    DEFAULTS = {"lr": 1e-3, "momentum": 0.0, "weight_decay": 0.0}
    STATE = ("momentum_buffer",)
    UNSUPPORTED = ("nesterov", "maximize", "differentiable")

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)

    @staticmethod
    def _set_hyperparameters(group: dict[str, Any], *, lr: float, momentum: float,
                             weight_decay: float) -> None:
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        group.update(lr=float(lr), momentum=float(momentum), weight_decay=float(weight_decay),
                     dampening=0.0)

    def _update(self, i: int, p: torch.Tensor, group: dict[str, Any]) -> None:
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        grad = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
        if momentum != 0:
            state = self.state.get(i)
            if state is None:
                buf = torch.clone(grad).detach()
                self.state[i] = {"momentum_buffer": buf}
            else:
                buf = state["momentum_buffer"]
                buf.mul_(momentum).add_(grad)
            grad = buf
        p.add_(grad, alpha=-lr)


def _step_dtype() -> torch.dtype:
    # torch.optim keeps `step` in float64 only when that is the default dtype
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
