"""One call shape for every explainer: ``Method(model, ...).attribute(inputs, target=...)``.

Input checks, target selection (hidden-layer targets included) and the gradient computation are
written once here; a method only says which module to differentiate
(:meth:`Explainer.backward_model`). Every forward an explainer runs holds the model's lock
(:func:`model_lock`: module swaps on one model never overlap another thread's forward) and leaves
the model's state as it found it (:func:`preserved_state`).
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Iterator

import torch
from torch import nn

from pellucid.data.validation import check_images, check_model_input
from pellucid.errors import InvalidInputError
from pellucid.explain._guard import model_lock, preserved_state, warn_if_training
from pellucid.explain.layers import find_module, layer_output
from pellucid.explain.targets import Target, resolve_target, select_target, target_layer

__all__ = ["Explainer", "check_inputs", "model_lock", "preserved_state"]  # (the last two re-exported)

# layers whose forward differs between train and eval mode


class Explainer:
    """Base class: ``attribute(x, target) = d score(model(x), target) / dx`` through ``backward_model``.

    ``target``: ``None`` (each sample's top output), an index, one index per sample, a callable
    ``f(output) -> (B,)``, or a hidden-layer target (:class:`~pellucid.explain.targets.LayerTarget`:
    a unit, a direction or a cosine similarity at a module path; its features are read by a forward
    hook for the duration of the call, and the forward stops there). Inputs are never modified; the
    model is never modified (a train-mode model's batch-norm statistics and other state are
    restored after each call, also on errors).
    Inputs must have the model's parameter dtype and device. Calls on one model from several
    threads are safe (they run one at a time).
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

    def layer_backward_model(self, layers: tuple[str, ...]) -> ContextManager[nn.Module]:
        """:meth:`backward_model` for a target that reads the hidden ``layers`` (module paths of
        ``model``): the yielded module must run them so that a forward hook on
        :func:`~pellucid.explain.layers.hook_point` sees their outputs. By default the same module."""
        return self.backward_model()

    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
        """The method's input gradient of the target score, same shape as ``inputs``."""
        grad, _, _ = self.gradient(check_inputs(inputs), target)
        return grad

    def gradient(self, x: torch.Tensor, target: Target
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | object]:
        """``(d score / dx, score (B,), resolved target)`` for already checked inputs ``x``."""
        check_model_input(self.model, x, name="inputs")
        layer = target_layer(target)
        if layer:
            find_module(self.model, layer, "target")  # an unknown path names the close ones
        warn_if_training(self.model)
        backward_model = self.layer_backward_model((layer,)) if layer else self.backward_model()
        with model_lock(self.model), preserved_state(self.model), backward_model as net, \
                torch.enable_grad():
            leaf = x.detach().clone().requires_grad_(True)  # never touch the caller's tensor
            output = layer_output(net, layer, leaf)  # net(leaf), or the layer's features
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
