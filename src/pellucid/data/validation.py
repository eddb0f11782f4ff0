"""Input checks at API boundaries: a clear error instead of a silently wrong answer."""

from __future__ import annotations

import math

from typing import Sequence

import torch

from pellucid.errors import InputTypeError, InvalidInputError


def check_value_range(value_range: object, name: str = "value_range") -> tuple[float, float] | None:
    """``(lo, hi)`` as finite floats with ``lo < hi`` (``None`` passes through); raises a one-line
    :class:`InvalidInputError` otherwise."""
    if value_range is None:
        return None
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be (low, high), got {value_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise InvalidInputError(f"{name} must be finite with low < high, got {value_range!r}")
    return lo, hi


def check_images(x: torch.Tensor, shape: Sequence[int] | None = None,
                 value_range: tuple[float, float] | None = (0.0, 1.0), name: str = "images") -> None:
    """Raise :class:`InvalidInputError` unless ``x`` is a finite float batch ``(B, *shape)`` in range."""
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputTypeError(f"{name} must be floating point in [0, 1], got dtype {x.dtype} "
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


def check_labels(y: torch.Tensor, n: int | None = None, n_classes: int | None = None,
                 device: torch.device | None = None, name: str = "labels") -> torch.Tensor:
    """``y`` as int64, or :class:`InvalidInputError` unless it is an integer tensor ``(n,)`` with
    values in ``0..n_classes-1`` (on ``device`` when given).

    ``n`` is the images' batch size; ``n_classes`` the number of the model's outputs. Any integer
    dtype is accepted (losses need int64, so the result is converted).
    """
    if not isinstance(y, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor of class indices, got {type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise InputTypeError(f"{name} must be an integer tensor of class indices, got dtype {y.dtype} "
                             "(use y.long())")
    if y.dim() != 1 or (n is not None and y.shape[0] != n):
        want = f"({n},)" if n is not None else "(B,)"
        raise InvalidInputError(f"{name} must have shape {want}, one class index per image, got "
                                f"{tuple(y.shape)}")
    if device is not None and y.device != torch.device(device):
        raise InvalidInputError(f"{name} are on {y.device} but the images are on {device}; "
                                f"move them with y.to({str(device)!r})")
    if y.numel() and n_classes is not None:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= n_classes:
            bad = y[(y < 0) | (y >= n_classes)]
            raise InvalidInputError(
                f"{name} must lie in 0..{n_classes - 1} (the model has {n_classes} outputs); "
                f"{len(bad)} do not (values {sorted(set(bad.tolist()))[:5]})")
    return y.long()


def check_model_input(model: torch.nn.Module, x: torch.Tensor, name: str = "images") -> None:
    """Raise :class:`InputTypeError` (a ``TypeError``) unless ``x`` is a floating tensor with a
    dtype of ``model``'s floating-point parameters, :class:`InvalidInputError` unless it is on
    their device. A mismatch would otherwise fail deep inside some layer.

    The dtype is not checked under ``torch.autocast`` (which casts per op); a model without
    floating parameters or buffers accepts anything.
    """
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputTypeError(f"{name} must be floating point in [0, 1], got dtype {x.dtype} "
                             "(convert uint8 images with x.float() / 255)")
    if not isinstance(model, torch.nn.Module):
        return
    tensors = [t for t in model.parameters() if t.is_floating_point()] or \
        [t for t in model.buffers() if t.is_floating_point()]
    if not tensors:
        return
    owner = type(model).__name__
    devices = sorted({str(t.device) for t in tensors})
    if str(x.device) not in devices:
        raise InvalidInputError(f"{name} are on device {x.device} but {owner}'s parameters are on "
                                f"{', '.join(devices)}; move the {name} with x.to({devices[0]!r}) or "
                                f"the model with model.to({str(x.device)!r})")
    dtypes = sorted({str(t.dtype) for t in tensors})
    if str(x.dtype) not in dtypes and not _autocast_enabled(x.device.type):
        raise InputTypeError(f"{name} have dtype {x.dtype} but {owner}'s parameters are "
                             f"{', '.join(dtypes)}; convert the {name} with x.to({dtypes[0]}) or the "
                             f"model with model.to({x.dtype})")


def _autocast_enabled(device_type: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # older torch: no device argument (CUDA only)
        return device_type == "cuda" and bool(torch.is_autocast_enabled())
