"""Guards for every forward an explainer runs: one lock per model, and its state restored after.

:func:`model_lock` serialises explainer calls (and temporary module swaps or hooks) on one model;
:func:`preserved_state` puts back every parameter, buffer and ``training`` flag on exit.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Iterator

import torch
from torch import nn

__all__ = ["model_lock", "preserved_state"]

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
