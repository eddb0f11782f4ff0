"""What to explain: a scalar per sample, picked from the model's output or from a hidden layer.

A target is

* ``None`` (each sample's top output), a class/unit index (``int``, or one per sample),
* any callable ``f(output) -> (B,)`` of the model's output,
* a :class:`LayerTarget`, a scalar per sample read from the output ("features") of one module,
  named by its path in ``model.named_modules()`` (``""``: the model's output):

  - :class:`UnitTarget`      ``f_b = features[b, channel, *position]`` (spatial centre by default),
  - :class:`DirectionTarget` ``f_b = <features_b, v>`` for ``v`` of the layer's feature shape,
  - :class:`CosineTarget`    ``f_b = cos(features_b, r)``, ``r`` a reference's features
    (:meth:`CosineTarget.from_input`; :func:`cosine_similarity_target` on the model's output).

Explainers and :func:`~pellucid.explain.counterfactual` read a layer target's features with a
forward hook registered for the duration of the call (under the model's lock, removed in
``finally``; the forward stops once the layer has run), also inside a model rewritten for the
pullback (see :mod:`pellucid.explain.layers`). Code that scores outputs itself runs
``scored_module(model, target)(x)`` and passes its result to :func:`select_target`.
"""

from __future__ import annotations

import reprlib
from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from pellucid.data.validation import check_model_input
from pellucid.errors import InvalidInputError
from pellucid.explain._guard import model_lock, preserved_state
from pellucid.explain.layers import UnitAddress, find_module, layer_output, parse_unit, unit_index

__all__ = ["CosineTarget", "DirectionTarget", "LayerOutput", "LayerTarget", "Target", "UnitTarget",
           "cosine_similarity_target", "layer_features", "resolve_target", "scored_module",
           "select_target", "slice_target", "target_layer", "tile_target"]

TargetFn = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------
# Hidden-layer targets
# ----------------------------------------------------------------------------------------------

class LayerTarget:
    """A scalar per sample computed from the features ``(B, ...)`` of the module at ``path``.

    Calling it on those features gives the score ``(B,)``; a channel, position or shape that does
    not fit the layer raises :class:`~pellucid.errors.InvalidInputError`.
    """

    path: str = ""

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def where(self) -> str:
        return f"layer {self.path!r}" if self.path else "the model output"


class UnitTarget(LayerTarget):
    """``f_b = features[b, channel, *position]``: one unit of layer ``path``.

    ``UnitTarget("features.3:5@2,2")``, ``UnitTarget("features.3", 5, (2, 2))`` or a
    :class:`~pellucid.explain.layers.UnitAddress`. Without a position a spatial layer is read at its
    centre ``(H // 2, W // 2)``, as everywhere a unit is addressed in pellucid (a channel's spatial
    mean is a :class:`DirectionTarget` with ``v = 1 / (H W)`` on that channel).
    """

    def __init__(self, unit: "str | UnitAddress", channel: int | None = None,
                 position: Sequence[int] | None = None) -> None:
        if channel is not None:
            unit = UnitAddress(unit, channel, None if position is None else tuple(position))
        self.address = parse_unit(unit, "target")
        self.path = self.address.path

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        index = unit_index(self.address, tuple(features.shape[1:]), "target")
        return features[(slice(None), *index)]

    def __repr__(self) -> str:
        return f"UnitTarget({str(self.address)!r})"


class DirectionTarget(LayerTarget):
    """``f_b = <features_b, v> = sum_i features[b, i] v[i]``: the projection of layer ``path``'s
    features onto ``direction`` (of the layer's per-sample feature shape, or one per sample)."""

    def __init__(self, path: str, direction: torch.Tensor) -> None:
        self.path = _check_path(path)
        self.direction = _finite_tensor(direction, "direction target: the direction")

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        v = _per_sample(self.direction, features, "direction target: the direction", self.where())
        return (features.flatten(1) * v).sum(1)

    def __repr__(self) -> str:
        return f"DirectionTarget({self.path!r}, shape {tuple(self.direction.shape)})"


class CosineTarget(LayerTarget):
    """``f_b = <features_b, r> / (|features_b| |r|)``: ascent "morphs" an input toward the reference.

    ``reference``: features of layer ``path`` (``""``: the model output), one shared ``(...)`` /
    ``(1, ...)`` or one per sample ``(B, ...)``; :meth:`from_input` computes them for an input.
    """

    def __init__(self, reference: torch.Tensor, path: str = "") -> None:
        self.path = _check_path(path)
        self.reference = _finite_tensor(reference, "cosine target: the reference")

    @classmethod
    def from_input(cls, model: nn.Module, reference_input: torch.Tensor, path: str = "") -> "CosineTarget":
        """The target ``cos(features(x), features(reference_input))`` at layer ``path`` of ``model``."""
        return cls(layer_features(model, reference_input, path), path)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        ref = _per_sample(self.reference, features, "cosine target: the reference", self.where())
        return F.cosine_similarity(features.flatten(1), ref, dim=1)

    def __repr__(self) -> str:
        return f"CosineTarget({self.path!r}, shape {tuple(self.reference.shape)})"


def _per_sample_reference(target: object) -> bool:
    return isinstance(target, CosineTarget) and target.reference.dim() >= 2 and \
        target.reference.shape[0] > 1


def tile_target(target: object, copies: int) -> object:
    """The target of ``copies`` copies of a batch laid out copy-major (rows ``c B .. (c + 1) B``
    are copy ``c``): a per-sample reference is repeated ``copies`` times; other targets are
    returned as they are (they work row by row)."""
    if _per_sample_reference(target) and copies > 1:
        ref = target.reference
        return CosineTarget(ref.repeat(copies, *([1] * (ref.dim() - 1))), target.path)
    return target


def slice_target(target: object, lo: int, hi: int) -> object:
    """The target of rows ``lo:hi`` of the rows ``target`` was made for (a per-sample reference is
    sliced; other targets are returned as they are)."""
    if _per_sample_reference(target):
        return CosineTarget(target.reference[lo:hi], target.path)
    return target


def cosine_similarity_target(reference: torch.Tensor, path: str = "") -> CosineTarget:
    """``f(out)_b = <out_b, r> / (|out_b| |r|)``: ascent "morphs" an input toward ``reference``'s output
    (or, with ``path``, toward its features at that layer: :class:`CosineTarget`).

    ``reference`` is one output ``(K,)``/``(1, K)`` shared by the batch, or one per sample ``(B, K)``.
    """
    return CosineTarget(reference, path)


def _check_path(path: str) -> str:
    if not isinstance(path, str):
        raise InvalidInputError(f"target: a layer path must be a str (a name from "
                                f"model.named_modules(), '' for the output), got {type(path).__name__}")
    return path


def _finite_tensor(value: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise InvalidInputError(f"{what} must be a floating-point torch.Tensor, got "
                                f"{value.dtype if isinstance(value, torch.Tensor) else type(value).__name__}")
    if value.numel() == 0 or not bool(torch.isfinite(value).all()):
        raise InvalidInputError(f"{what} is empty or contains NaN or inf")
    return value.detach()


def _per_sample(ref: torch.Tensor, features: torch.Tensor, what: str, where: str) -> torch.Tensor:
    """``ref`` as ``(1, D)`` or ``(B, D)``: shaped like one sample's features ``S``, ``(1, *S)`` or
    ``(B, *S)``; anything else is an error naming both shapes."""
    shape, batch = tuple(features.shape[1:]), features.shape[0]
    if tuple(ref.shape) == shape:
        return ref.reshape(1, -1).to(features)
    if tuple(ref.shape[1:]) == shape and ref.shape[0] in (1, batch):
        return ref.flatten(1).to(features)
    raise InvalidInputError(f"{what} has shape {tuple(ref.shape)}, but {where} has features of shape "
                            f"{shape} per sample (batch {batch}); pass one of shape {shape} (or one per "
                            "sample) computed with the same model and layer")


def target_layer(target: object) -> str:
    """The layer path a target reads (``""``: the model's output)."""
    return target.path if isinstance(target, LayerTarget) else ""


class LayerOutput(nn.Module):
    """``LayerOutput(model, path)(x)``: the output of module ``path`` on ``model(x)`` (``""``: the
    model's output). The forward stops once the layer has run; the hook is removed afterwards."""

    def __init__(self, model: nn.Module, path: str) -> None:
        super().__init__()
        find_module(model, _check_path(path), "layer")
        self.model, self.path = model, path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with model_lock(self.model):
            return layer_output(self.model, self.path, x, "layer")


def scored_module(model: nn.Module, target: object) -> nn.Module:
    """The module whose output ``target`` scores: ``model``, or ``LayerOutput(model, path)`` for a
    :class:`LayerTarget`; ``select_target(scored_module(model, t)(x), resolve_target(...))``."""
    path = target_layer(target)
    return LayerOutput(model, path) if path else model


def layer_features(model: nn.Module, x: torch.Tensor, path: str = "") -> torch.Tensor:
    """Layer ``path``'s output on ``x``, detached (no gradient; the model's lock held and its state
    restored)."""
    find_module(model, _check_path(path), "layer")
    check_model_input(model, x, name="reference input")
    with model_lock(model), preserved_state(model), torch.no_grad():
        return layer_output(model, path, x, "layer").detach().clone()


Target = Union[None, int, Sequence[int], torch.Tensor, TargetFn, LayerTarget]


# ----------------------------------------------------------------------------------------------
# Resolving and selecting
# ----------------------------------------------------------------------------------------------

def resolve_target(output: torch.Tensor, target: Target) -> torch.Tensor | TargetFn:
    """Fix a target once (for ``None``: each sample's argmax now), so iterated ascent keeps it.

    Callables (layer targets included) are returned as they are; for a :class:`LayerTarget`,
    ``output`` is the layer's features (see :func:`scored_module`)."""
    if callable(target):
        return target
    logits = _as_logits(output)
    batch, n_out = logits.shape
    if target is None:
        return logits.argmax(1)
    valid = f"valid targets 0..{n_out - 1}"
    if isinstance(target, int) and not isinstance(target, bool) and not 0 <= target < n_out:
        raise InvalidInputError(f"target {reprlib.repr(target)} is out of range: the model has {n_out} "
                                f"outputs ({valid})")
    try:
        index = torch.as_tensor(target, device=logits.device)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:  # strings, huge ints, ragged lists
        raise InvalidInputError(f"target must be an integer class/unit index, one per sample, or a "
                                f"function of the output ({valid}); got {reprlib.repr(target)} "
                                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise InvalidInputError(f"target must be an integer class/unit index, got dtype {index.dtype}")
    if index.dim() > 1:
        raise InvalidInputError(f"target has shape {tuple(index.shape)}; pass one index (shape () or "
                                f"(1,)) or one per sample, shape ({batch},)")
    index = index.long().reshape(-1)
    if index.numel() == 1:
        index = index.expand(batch)
    if index.numel() != batch:
        raise InvalidInputError(f"got {index.numel()} targets for a batch of {batch}; pass one target "
                                "or one per sample")
    out_of_range = (index < 0) | (index >= n_out)
    if bool(out_of_range.any()):
        bad = index[out_of_range][0].item()
        raise InvalidInputError(f"target {bad} is out of range: the model has {n_out} outputs "
                                f"({valid})")
    return index


def select_target(output: torch.Tensor, target: torch.Tensor | TargetFn) -> torch.Tensor:
    """The explained scalar per sample, ``(B,)``: ``output[b, target_b]`` or ``target(output)``
    (for a :class:`LayerTarget`, ``output`` is the layer's features)."""
    if callable(target):
        score = target(output)
        if not isinstance(score, torch.Tensor) or score.shape != (output.shape[0],):
            raise InvalidInputError("a target function must return one scalar per sample, shape "
                                    f"({output.shape[0]},), got "
                                    f"{tuple(score.shape) if isinstance(score, torch.Tensor) else type(score).__name__}")
        return score
    return _as_logits(output).gather(1, target.view(-1, 1)).squeeze(1)


def _as_logits(output: torch.Tensor) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise InvalidInputError(f"the model returned {type(output).__name__}, not a tensor; call "
                                "model.eval() (train-mode Inception/GoogLeNet return tuples) or pass "
                                "a target function that picks the output")
    if output.dim() < 2:
        raise InvalidInputError(f"the model output has shape {tuple(output.shape)}; expected (B, K)")
    return output.flatten(1)
