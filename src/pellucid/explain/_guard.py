"""Guards for every forward an explainer runs: one lock per model, and its state restored after.

:func:`model_lock` serialises explainer calls (and temporary module swaps or hooks) on one model;
:func:`preserved_state` puts back every parameter, buffer and ``training`` flag on exit;
:class:`ThreadSafeTracer` keeps a ``torch.fx`` trace from capturing other threads' forwards.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Iterator

import torch
import torch.fx as fx
from torch import nn

from pellucid._warnings import warn

__all__ = ["MODE_DEPENDENT", "ThreadSafeTracer", "model_lock", "preserved_state", "warn_if_training"]

# layers whose forward depends on ``training``: batch statistics, random masks
MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)

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


def warn_if_training(model: nn.Module,
                     effect: str = "they change the explanation; their statistics are restored afterwards"
                     ) -> None:
    """Warn if some batch-norm or dropout layer of ``model`` is in training mode; ``effect`` says
    what that does to the result."""
    if any(m.training and isinstance(m, MODE_DEPENDENT) for m in model.modules()):
        warn(f"{type(model).__name__} has batch-norm/dropout layers in training mode ({effect}); "
             "call model.eval() first")


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


# torch.fx patches ``nn.Module.__call__`` and ``nn.Module.__getattr__`` process-wide while it traces,
# and restores them in the order it patched them; two traces interleaved by threads would restore
# each other's patches and leave a dead tracer installed. One trace at a time.
_FX_TRACE_LOCK = threading.Lock()


class ThreadSafeTracer(fx.Tracer):
    """A ``torch.fx.Tracer`` that other threads can run models beside.

    While ``torch.fx`` traces, every ``nn.Module`` call and parameter lookup in the process goes
    through the tracer, so a forward another thread runs at that moment (the app classifying while
    an explainer rewrites the same model) would be recorded into the graph or fail with
    "module is not installed as a submodule". This tracer answers calls from any thread but its
    own with the untraced module, and :meth:`trace` takes a process-wide lock, since interleaved
    traces would undo each other's patches. (Traces run by other code with a plain ``fx.Tracer``
    at the same time are outside its reach.) Subclasses customise :meth:`traced_call_module`.
    """

    def trace(self, root, concrete_args=None):  # type: ignore[override]
        with _FX_TRACE_LOCK:
            self._tracing_thread = threading.get_ident()
            try:
                return super().trace(root, concrete_args)
            finally:
                self._tracing_thread = None

    def _other_thread(self) -> bool:
        return getattr(self, "_tracing_thread", None) != threading.get_ident()

    def call_module(self, m, forward, args, kwargs):  # type: ignore[override]
        if self._other_thread():  # ``forward`` is the real ``nn.Module.__call__`` of ``m``
            return forward(*args, **kwargs)
        return self.traced_call_module(m, forward, args, kwargs)

    def traced_call_module(self, m, forward, args, kwargs):
        """``fx.Tracer.call_module``, for the tracing thread only."""
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):  # type: ignore[override]
        if self._other_thread():
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)
