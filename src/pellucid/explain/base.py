"""One call shape for every explainer: ``Method(model, ...).attribute(inputs, target=...)``.

Input checks, target selection and the gradient computation are written once here; a method only
says which module to differentiate (:meth:`Explainer.backward_model`). Every forward an explainer
runs holds the model's lock (:func:`model_lock`: module swaps on one model never overlap another
thread's forward) and leaves the model's state as it found it (:func:`preserved_state`).
"""

from __future__ import annotations

import contextlib
import threading
import warnings
import weakref
from typing import Iterator

import torch
from torch import nn

from pellucid.data.validation import check_images, check_model_input
from pellucid.errors import InvalidInputError
from pellucid.explain.targets import Target, resolve_target, select_target

__all__ = ["Explainer", "check_inputs", "model_lock", "preserved_state"]

# layers whose forward differs between train and eval mode
_MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


class Explainer:
    """Base class: ``attribute(x, target) = d score(model(x), target) / dx`` through ``backward_model``.

    ``target``: ``None`` (each sample's top output), an index, one index per sample, or a callable
    ``f(output) -> (B,)``. Inputs are never modified; the model is never modified (a train-mode
    model's batch-norm statistics and other state are restored after each call, also on errors).
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

    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
        """The method's input gradient of the target score, same shape as ``inputs``."""
        grad, _, _ = self.gradient(check_inputs(inputs), target)
        return grad

    def gradient(self, x: torch.Tensor, target: Target
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | object]:
        """``(d score / dx, score (B,), resolved target)`` for already checked inputs ``x``."""
        check_model_input(self.model, x, name="inputs")
        if any(m.training and isinstance(m, _MODE_DEPENDENT) for m in self.model.modules()):
            warnings.warn(f"{type(self.model).__name__} has batch-norm/dropout layers in training mode "
                          "(they change the explanation; their statistics are restored afterwards); "
                          "call model.eval() first", stacklevel=3)
        with model_lock(self.model), preserved_state(self.model), self.backward_model() as net, \
                torch.enable_grad():
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


_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock of ``model`` (one per module object, kept outside it so it still pickles).

    Held by every explainer forward + backward and by :func:`~pellucid.explain.rewrite.swap_modules`
    for the duration of its block, so that no thread runs the model while another has swapped its
    modules or is restoring its state.
    """
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Restore every parameter, buffer and ``training`` flag of ``model`` on exit (also on errors).

    Only needed while some module is in training mode, where a forward updates batch-norm running
    statistics (and, e.g., initialises ActNorm); in eval mode this costs one pass over the modules.
    Values are copied back in place (the same tensor objects, bit-equal); tensors the forward
    replaced by new objects are put back.
    """
    modules = list(model.modules())
    if not any(m.training for m in modules):
        yield
        return
    flags = [(m, m.training) for m in modules]
    entries: list[tuple[dict, str, torch.Tensor]] = []
    saved: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for m in modules:
            for store in (m._parameters, m._buffers):
                for key, t in store.items():
                    if t is not None:
                        entries.append((store, key, t))
                        if id(t) not in saved:
                            saved[id(t)] = t.detach().clone()
    try:
        yield
    finally:
        with torch.no_grad():
            for store, key, t in entries:
                store[key] = t
                old = saved[id(t)]
                if t.shape != old.shape or t.dtype != old.dtype or t.device != old.device:
                    t.data = old
                elif not torch.equal(t, old):  # (NaN != NaN: copied)
                    t.copy_(old)
        for m, flag in flags:
            m.training = flag
