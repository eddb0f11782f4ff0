"""Localisation: does the attribution point at where the evidence is?

:func:`pointing_game` needs a ground-truth mask; :func:`focus` a 2x2 mosaic whose target-class
quadrants are known (:func:`make_mosaics` builds them from labelled images).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pellucid.errors import InvalidInputError
from pellucid.explain._metrics._core import (Seed, check_batch, check_count, make_generator, rand,
                                             register, result_dtype, stat_dtype)
from pellucid.explain.targets import Target

__all__ = ["Mosaics", "focus", "make_mosaics", "mosaic", "pointing_game", "quadrant_masks"]


def _check_mask(mask: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """A 0/1 or bool mask broadcastable to the inputs, as ``(B, D)`` bools."""
    if not isinstance(mask, torch.Tensor):
        raise InvalidInputError(f"mask must be a tensor broadcastable to the inputs "
                                f"{tuple(inputs.shape)}, got {type(mask).__name__}")
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise InvalidInputError("mask must be boolean or hold only 0 and 1")
    try:
        return mask.to(inputs.device).bool().expand_as(inputs).reshape(len(inputs), -1)
    except RuntimeError:
        raise InvalidInputError(f"mask has shape {tuple(mask.shape)}; pass one broadcastable to the "
                                f"inputs {tuple(inputs.shape)}, e.g. (B, 1, H, W)") from None


@register("pointing_game",
          "the attribution maximum lies inside the ground-truth mask (Zhang et al. 2018)",
          higher_is_better=True)
def pointing_game(model: nn.Module | None, inputs: torch.Tensor, attributions: torch.Tensor,
                  target: Target = None, *, mask: torch.Tensor) -> torch.Tensor:
    """Pointing game (Zhang et al. 2018, "Top-Down Neural Attention by Excitation Backprop"),
    ``(B,)``: ``1`` if a maximum of the attribution (over all elements, ties included) lies inside
    ``mask``, else ``0``; NaN for an empty mask. As Quantus' ``PointingGame`` (no tolerance
    margin). ``model`` and ``target`` are not used. Higher is better.
    """
    check_batch(inputs, attributions)
    inside = _check_mask(mask, inputs)
    a = attributions.flatten(1)
    hit = ((a == a.amax(1, keepdim=True)) & inside).any(1).to(result_dtype(inputs))
    return hit.masked_fill(~inside.any(1), torch.nan)


@register("focus",
          "share of positive attribution in the target-class quadrants of a mosaic (Arias-Duart et "
          "al. 2022)",
          higher_is_better=True)
def focus(model: nn.Module | None, inputs: torch.Tensor, attributions: torch.Tensor,
          target: Target = None, *, mask: torch.Tensor) -> torch.Tensor:
    """Focus (Arias-Duart et al. 2022, "Focus! Rating XAI Methods and Finding Biases"), ``(B,)``
    in ``[0, 1]``: the share of positive attribution inside the target-class quadrants of a mosaic::

        Focus = sum_i max(a_i, 0) m_i / sum_i max(a_i, 0)

    ``mask``: the target quadrants (see :func:`make_mosaics`). NaN where no attribution is
    positive. ``model`` and ``target`` are not used. Higher is better.
    """
    check_batch(inputs, attributions)
    inside = _check_mask(mask, inputs)
    positive = attributions.flatten(1).to(stat_dtype(inputs.device)).clamp_min(0)
    return ((positive * inside).sum(1) / positive.sum(1)).to(result_dtype(inputs))


# --------------------------------------------------------------------------- mosaics

def mosaic(tiles: torch.Tensor) -> torch.Tensor:
    """``(N, C, 2H, 2W)`` mosaics from ``tiles (N, 4, C, H, W)`` in the order top-left, top-right,
    bottom-left, bottom-right."""
    if not isinstance(tiles, torch.Tensor) or tiles.dim() != 5 or tiles.shape[1] != 4:
        got = tuple(tiles.shape) if isinstance(tiles, torch.Tensor) else type(tiles).__name__
        raise InvalidInputError(f"tiles must have shape (N, 4, C, H, W), got {got}")
    top = torch.cat([tiles[:, 0], tiles[:, 1]], dim=-1)
    bottom = torch.cat([tiles[:, 2], tiles[:, 3]], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def quadrant_masks(is_target: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(N, 1, 2H, 2W)`` bool masks of the quadrants flagged in ``is_target (N, 4)`` (tile order
    as in :func:`mosaic`)."""
    if not isinstance(is_target, torch.Tensor) or is_target.dim() != 2 or is_target.shape[1] != 4:
        raise InvalidInputError("is_target must be a (N, 4) tensor, one flag per quadrant")
    grid = is_target.bool().view(-1, 1, 2, 2)
    return grid.repeat_interleave(height, dim=2).repeat_interleave(width, dim=3)


@dataclass(frozen=True)
class Mosaics:
    """2x2 mosaics: ``images (N, C, 2H, 2W)``; ``masks (N, 1, 2H, 2W)``, the two quadrants of class
    ``targets (N,)``; ``sources (N, 4)``, the index of each tile's image in the input images."""

    images: torch.Tensor
    masks: torch.Tensor
    targets: torch.Tensor
    sources: torch.Tensor


def make_mosaics(images: torch.Tensor, labels: torch.Tensor, n_mosaics: int, seed: Seed = 0) -> Mosaics:
    """Mosaics for :func:`focus` (Arias-Duart et al. 2022): each holds two distinct images of a
    target class (drawn uniformly among classes with at least two images) and two distinct images
    of other classes, at random positions."""
    n = check_count(n_mosaics, "n_mosaics")
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise InvalidInputError("images must be a (N, C, H, W) tensor")
    if not isinstance(labels, torch.Tensor) or labels.shape != (len(images),) \
            or labels.is_floating_point():
        raise InvalidInputError(f"labels must be an integer tensor of shape ({len(images)},)")
    labels = labels.to(images.device)
    classes, counts = labels.unique(return_counts=True)
    eligible = classes[(counts >= 2) & (len(labels) - counts >= 2)]
    if eligible.numel() == 0:
        raise InvalidInputError("make_mosaics needs a class with at least 2 images and 2 images of "
                                "other classes")
    gen = make_generator(seed, images.device)
    pick = torch.randint(0, len(eligible), (n,), generator=gen, device=gen.device).to(images.device)
    targets = eligible[pick]
    same = labels.unsqueeze(0) == targets.unsqueeze(1)  # (N, n_images)
    keys = rand((2, n, len(labels)), gen, images.float())  # uniform keys in [0, 1)
    inner = keys[0].masked_fill(~same, -1).topk(2, dim=1).indices
    outer = keys[1].masked_fill(same, -1).topk(2, dim=1).indices
    sources = torch.cat([inner, outer], 1)  # (N, 4)
    flags = torch.tensor([True, True, False, False], device=images.device).expand(n, 4)
    order = rand((n, 4), gen, images.float()).argsort(1)
    sources, flags = sources.gather(1, order), flags.gather(1, order)
    tiles = images[sources]  # (N, 4, C, H, W)
    masks = quadrant_masks(flags, images.shape[2], images.shape[3])
    return Mosaics(mosaic(tiles), masks, targets, sources)
