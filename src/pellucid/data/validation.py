"""Input checks at API boundaries: a clear error instead of a silently wrong answer."""

from __future__ import annotations

from typing import Sequence

import torch

from pellucid.errors import InvalidInputError


def check_images(x: torch.Tensor, shape: Sequence[int] | None = None,
                 value_range: tuple[float, float] | None = (0.0, 1.0), name: str = "images") -> None:
    """Raise :class:`InvalidInputError` unless ``x`` is a finite float batch ``(B, *shape)`` in range."""
    if not isinstance(x, torch.Tensor):
        raise InvalidInputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InvalidInputError(f"{name} must be floating point in [0, 1], got dtype {x.dtype} "
                                "(convert uint8 images with x.float() / 255)")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise InvalidInputError(f"{name} must have shape (B, {', '.join(map(str, shape))}), "
                                f"got {tuple(x.shape)}")
    if x.numel() == 0:
        raise InvalidInputError(f"{name} is empty")
    with torch.no_grad():
        if not bool(torch.isfinite(x).all()):
            raise InvalidInputError(f"{name} contain NaN or inf")
        if value_range is not None:
            lo, hi = float(x.min()), float(x.max())
            if lo < value_range[0] or hi > value_range[1]:
                raise InvalidInputError(
                    f"{name} must lie in [{value_range[0]:g}, {value_range[1]:g}], found "
                    f"[{lo:.4g}, {hi:.4g}] (scale 0..255 images by 1/255)")
