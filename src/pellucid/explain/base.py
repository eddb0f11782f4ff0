"""One call shape for every explainer: ``Method(model, ...).attribute(inputs, target=...)``.

Input checks, target selection and the gradient computation are written once here; a method only
says which module to differentiate (:meth:`Explainer.backward_model`).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import torch
from torch import nn

from pellucid.data.validation import check_images
from pellucid.errors import InvalidInputError
from pellucid.explain.targets import Target, resolve_target, select_target

__all__ = ["Explainer", "check_inputs"]

# layers whose forward differs between train and eval mode
_MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


class Explainer:
    """Base class: ``attribute(x, target) = d score(model(x), target) / dx`` through ``backward_model``.

    ``target``: ``None`` (each sample's top output), an index, one index per sample, or a callable
    ``f(output) -> (B,)``. Inputs are never modified; the model is never modified.
    """

    name = "explainer"

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise InvalidInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model

    @contextlib.contextmanager
    def backward_model(self) -> Iterator[nn.Module]:
        """The module whose forward equals ``model``'s and whose backward defines the method."""
        yield self.model

    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
        """The method's input gradient of the target score, same shape as ``inputs``."""
        grad, _, _ = self.gradient(check_inputs(inputs), target)
        return grad

    def gradient(self, x: torch.Tensor, target: Target
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | object]:
        """``(d score / dx, score (B,), resolved target)`` for already checked inputs ``x``."""
        if any(m.training and isinstance(m, _MODE_DEPENDENT) for m in self.model.modules()):
            warnings.warn(f"{type(self.model).__name__} has batch-norm/dropout layers in training mode "
                          "(they change the explanation); call model.eval() first", stacklevel=3)
        with self.backward_model() as net, torch.enable_grad():
            leaf = x.detach().clone().requires_grad_(True)  # never touch the caller's tensor
            output = net(leaf)
            resolved = resolve_target(output, target)
            score = select_target(output, resolved)
            (grad,) = torch.autograd.grad(score.sum(), leaf)
        return grad, score.detach(), resolved

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__})"


def check_inputs(inputs: torch.Tensor) -> torch.Tensor:
    """A finite, non-empty float batch ``(B, ...)``; raises :class:`InvalidInputError` otherwise."""
    check_images(inputs, shape=None, value_range=None, name="inputs")
    if inputs.dim() < 2:
        raise InvalidInputError(f"inputs must be a batch (B, ...), got shape {tuple(inputs.shape)}; "
                                "add a batch axis with x.unsqueeze(0)")
    return inputs
