"""Semantic features: the common machinery of every white-box layer.

A semantic feature layer ("Towards White Box Deep Learning", Sec. 3) is

    features w_f  ->  pose sampler  ->  posed weights g_{f,p} = normalize(pose_p(w_f))
                  ->  match s_{b,f,p} = <x_b, g_{f,p}>  ->  max over poses p  ->  activation

Subclasses say what a feature, a pose and a match are; this base class does the rest: max over
poses (returning the argmax pose for inspection), caching the posed weights in eval mode, and
the constraint projection called after every optimizer step (:func:`project_constraints_`).

For excitation pullbacks (:mod:`pellucid.explain.rewrite`) a layer declares its sites: the max
over poses is a max-type pool (differentiated through ``softmax(s / tau)`` over the poses) and a
ReLU activation a gate (``sigmoid(z / tau)``); :meth:`SemanticFeatures.excitation_forward` is the
forward with the surrogate gates in their place (same values).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn


def normalize(w: torch.Tensor, start_dim: int = 1, eps: float = 1e-10) -> torch.Tensor:
    """``w / (||w||_2 + eps)`` with the norm over dims ``start_dim..`` (the flattened feature)."""
    norm = w.flatten(start_dim).norm(dim=-1)
    return w / (norm.view(*norm.shape, *([1] * (w.dim() - start_dim))) + eps)


class SemanticFeatures(nn.Module):
    """Base class: ``y[b, f, ...] = act(max_p match(x_b, g_{f,p}))``.

    Subclasses implement :meth:`posed_weights` ``-> (F, P, ...)``, :meth:`match`
    ``-> (B, F, P, ...)`` and optionally :meth:`activation` (setting ``relu_activation`` when it
    applies a ReLU) and :meth:`project_`.

    In eval mode the posed weights are computed once and cached as constants (recomputed when a
    parameter changes, e.g. after ``load_state_dict``): input gradients flow, parameter gradients
    do not. Train in train mode.
    """

    def __init__(self) -> None:
        super().__init__()
        self._posed_cache: tuple[tuple, torch.Tensor] | None = None

    # -- to implement -------------------------------------------------------------------------
    def posed_weights(self) -> torch.Tensor:
        raise NotImplementedError

    def match(self, x: torch.Tensor, posed: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    relu_activation = False  # whether activation() ends in a ReLU (a pullback gate)

    def activation(self, scores: torch.Tensor, relu: Callable[[torch.Tensor], torch.Tensor] = F.relu
                   ) -> torch.Tensor:
        """The nonlinearity after the max over poses (identity here); ``relu`` is the ReLU to use."""
        return scores

    @torch.no_grad()
    def project_(self) -> None:
        """Project parameters back onto their constraint set (called after each optimizer step)."""

    # -- shared machinery ---------------------------------------------------------------------
    def _posed(self) -> torch.Tensor:
        if self.training:
            self._posed_cache = None
            return self.posed_weights()
        key = tuple((p.data_ptr(), p._version, p.dtype) for p in self.parameters())
        if self._posed_cache is None or self._posed_cache[0] != key:
            with torch.no_grad():
                self._posed_cache = (key, self.posed_weights())
        return self._posed_cache[1]

    def forward(self, x: torch.Tensor, return_poses: bool = False):
        scores = self.match(x, self._posed())  # (B, F, P, ...)
        best, pose = scores.max(dim=2)  # max over poses
        out = self.activation(best)
        return (out, pose) if return_poses else out

    # -- excitation pullback protocol ---------------------------------------------------------
    def excitation_sites(self) -> tuple[tuple[str, str], ...]:
        """``(kind, role)`` of the nonlinear sites: the max over poses, then the ReLU if any."""
        relu = (("ReLU", "relu"),) if self.relu_activation else ()
        return (("max over poses", "max"),) + relu

    def excitation_forward(self, gates: Any, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with ``gates.max`` over the poses and ``gates.relu`` as the ReLU."""
        scores = self.match(x, self._posed())  # (B, F, P, ...)
        return self.activation(gates.max(scores, dim=2), gates.relu)


@torch.no_grad()
def project_constraints_(model: nn.Module) -> None:
    """Call ``project_()`` on every module of ``model`` that has one (after each optimizer step)."""
    for m in model.modules():
        project = getattr(m, "project_", None)
        if callable(project):
            project()
