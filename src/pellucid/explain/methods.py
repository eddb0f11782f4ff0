"""Explainers, registered by name for the CLI, the app and the benchmarks."""

from __future__ import annotations

import contextlib
from typing import ContextManager, Iterator

from torch import nn

from pellucid._registry import Registry
from pellucid._warnings import warn
from pellucid.explain.base import Explainer, model_lock
from pellucid.explain.gates import Gate, check_temperature
from pellucid.explain.rewrite import (CoverageReport, PullbackCoverageWarning, UntraceableModelError,
                                      model_fingerprint, rewrite_for_pullback, swap_modules,
                                      warn_if_nothing_rewritten)

__all__ = ["EXPLAINERS", "ExcitationPullback", "Gradient", "create_explainer"]

EXPLAINERS: Registry[type[Explainer]] = Registry("explainer")
_MAX_TAPPED = 16  # rewritten copies with hidden-layer taps kept per explainer


@EXPLAINERS.register("gradient")
class Gradient(Explainer):
    """Vanilla input gradient ``d f_t(x) / dx`` (hard ReLU gates, hard max pools)."""

    name = "gradient"


@EXPLAINERS.register("pullback")
class ExcitationPullback(Explainer):
    """Excitation pullback: ``d f_t(x) / dx`` with every ReLU gate ``1[z > 0]`` replaced by
    ``gate(z / tau)`` and every max pool differentiated as a ``softmax(x / tau)`` pool, in the
    backward pass only (the forward, hence the prediction, is unchanged).

    ``temperature`` is tau (paper: 0.3); ``gate`` is ``"sigmoid"`` (paper) or ``"normal_cdf"``
    or a callable ``(z, tau) -> gate``; ``detach_pool_weights`` stops the gradient through the
    softmax pooling weights (the successor paper's choice; the default follows the paper).

    The model is rewritten once, with ``torch.fx``, into a new module (``self.coverage`` lists every
    site and what was done to it): ReLU calls and (adaptive) max pools, and layers that declare
    their own sites (the white-box network's max over poses and ReLUs; see
    :mod:`pellucid.explain.rewrite`). A hidden-layer target gets a copy rewritten with a tap on its
    layer (made once per set of layers). If the model cannot be traced, ``nn.ReLU``/
    ``nn.MaxPool2d``/``nn.AdaptiveMaxPool2d`` modules and self-rewriting layers are swapped for the
    duration of each call instead (restored in ``finally``) and a warning says so; a model with no
    site at all is warned about too (the pullback is then the plain gradient). If the model is
    edited after the explainer was built (a layer swapped, new parameter objects loaded, an
    attribute or the train/eval mode changed), the next call rebuilds the rewritten module (see
    :func:`~pellucid.explain.rewrite.model_fingerprint`).
    """

    name = "pullback"

    def __init__(self, model: nn.Module, temperature: float = 0.3, gate: str | Gate = "sigmoid",
                 detach_pool_weights: bool = False, replace_maxpool: bool = True) -> None:
        super().__init__(model)
        self.temperature = check_temperature(temperature)
        self.gate = gate
        self.detach_pool_weights = detach_pool_weights
        self.replace_maxpool = replace_maxpool
        with model_lock(model):
            self._build()

    def _build(self) -> None:
        """Rewrite the model (or count its modules for the fallback) and remember its fingerprint."""
        model = self.model
        self._fingerprint = model_fingerprint(model)
        self._tapped: dict[tuple[str, ...], nn.Module] = {}
        try:
            self._rewritten, self.coverage = rewrite_for_pullback(
                model, self.temperature, self.gate, self.detach_pool_weights, self.replace_maxpool)
        except UntraceableModelError as e:
            self._rewritten = None
            with swap_modules(model, self.temperature, self.gate, self.detach_pool_weights,
                              self.replace_maxpool) as report:
                self.coverage: CoverageReport = report  # counted, then restored at once
            warn(f"{e}; falling back to replacing modules per call ({report.relu_sites} "
                 f"ReLU and {report.maxpool_sites} max-pool site(s)): functional "
                 "relu/max_pool calls inside forward are not reached", PullbackCoverageWarning)
        warn_if_nothing_rewritten(self.coverage)

    def _refresh(self) -> None:
        """Rebuild if the model changed since the rewritten module was made (caller holds the lock)."""
        if model_fingerprint(self.model) != self._fingerprint:
            self._build()

    @property
    def rewritten(self) -> nn.Module | None:
        """The fx-rewritten module (shares the model's parameters), or None in the fallback."""
        with model_lock(self.model):
            self._refresh()
            return self._rewritten

    def backward_model(self) -> ContextManager[nn.Module]:
        return self._backward_model(())

    def layer_backward_model(self, layers: tuple[str, ...]) -> ContextManager[nn.Module]:
        return self._backward_model(tuple(layers))

    @contextlib.contextmanager
    def _backward_model(self, layers: tuple[str, ...]) -> Iterator[nn.Module]:
        with model_lock(self.model):
            self._refresh()
            if self._rewritten is None:  # fallback: hooks find the layers by path in the model
                with swap_modules(self.model, self.temperature, self.gate, self.detach_pool_weights,
                                  self.replace_maxpool):
                    yield self.model
                return
            yield self._with_taps(layers) if layers else self._rewritten

    def _with_taps(self, layers: tuple[str, ...]) -> nn.Module:
        """The model rewritten with taps on ``layers`` (cached; the caller holds the lock)."""
        if layers not in self._tapped:
            if len(self._tapped) >= _MAX_TAPPED:
                self._tapped.pop(next(iter(self._tapped)))
            self._tapped[layers], _ = rewrite_for_pullback(
                self.model, self.temperature, self.gate, self.detach_pool_weights,
                self.replace_maxpool, layers=layers)
        return self._tapped[layers]


def create_explainer(method: str | Explainer, model: nn.Module, **kwargs) -> Explainer:
    """An explainer by registered name (``"pullback"``, ``"gradient"``) or an instance passed through.

    Keyword arguments a method does not take (e.g. ``temperature`` for ``"gradient"``) are ignored.
    """
    if isinstance(method, Explainer):
        return method
    cls = EXPLAINERS.get(method)
    if cls is Gradient:
        return cls(model)
    return cls(model, **kwargs)
