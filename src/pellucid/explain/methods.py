"""Explainers, registered by name for the CLI, the app and the benchmarks."""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

from torch import nn

from pellucid._registry import Registry
from pellucid.explain.base import Explainer, model_lock
from pellucid.explain.gates import Gate, check_temperature
from pellucid.explain.rewrite import (CoverageReport, PullbackCoverageWarning, UntraceableModelError,
                                      model_fingerprint, rewrite_for_pullback, swap_modules,
                                      warn_if_nothing_rewritten)

__all__ = ["EXPLAINERS", "ExcitationPullback", "Gradient", "create_explainer"]

EXPLAINERS: Registry[type[Explainer]] = Registry("explainer")


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

    The model is rewritten once, with ``torch.fx``, into a new module (``self.coverage`` says what
    was replaced). If it cannot be traced, ``nn.ReLU``/``nn.MaxPool2d`` modules are swapped for the
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
            self._build(stacklevel=3)

    def _build(self, stacklevel: int) -> None:
        """Rewrite the model (or count its modules for the fallback) and remember its fingerprint."""
        model = self.model
        self._fingerprint = model_fingerprint(model)
        try:
            self._rewritten, self.coverage = rewrite_for_pullback(
                model, self.temperature, self.gate, self.detach_pool_weights, self.replace_maxpool)
        except UntraceableModelError as e:
            self._rewritten = None
            with swap_modules(model, self.temperature, self.gate, self.detach_pool_weights,
                              self.replace_maxpool) as report:
                self.coverage: CoverageReport = report  # counted, then restored at once
            warnings.warn(f"{e}; falling back to replacing {report.relu_sites} nn.ReLU and "
                          f"{report.maxpool_sites} nn.MaxPool2d module call(s) per call: functional "
                          "relu/max_pool calls inside forward are not reached", PullbackCoverageWarning,
                          stacklevel=stacklevel)
        warn_if_nothing_rewritten(self.coverage, stacklevel=stacklevel)

    def _refresh(self, stacklevel: int) -> None:
        """Rebuild if the model changed since the rewritten module was made (caller holds the lock)."""
        if model_fingerprint(self.model) != self._fingerprint:
            self._build(stacklevel + 1)

    @property
    def rewritten(self) -> nn.Module | None:
        """The fx-rewritten module (shares the model's parameters), or None in the fallback."""
        with model_lock(self.model):
            self._refresh(stacklevel=3)
            return self._rewritten

    @contextlib.contextmanager
    def backward_model(self) -> Iterator[nn.Module]:
        with model_lock(self.model):
            self._refresh(stacklevel=6)
            if self._rewritten is not None:
                yield self._rewritten
                return
            with swap_modules(self.model, self.temperature, self.gate, self.detach_pool_weights,
                              self.replace_maxpool):
                yield self.model


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
