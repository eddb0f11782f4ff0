"""From what a user gives the app (an uploaded file, a drawing, a bundled photo) to a model input.

The last step is always :func:`pellucid.data.images.load_image`, the conversion of ``pellucid
explain``: 8-bit grey or RGB pixels scaled to [0, 1], the shorter side resized to the model's input
size (bilinear, antialiased), then centre-cropped. Before it, the app may need a step that the CLI
leaves to the user, and each such step is listed in :attr:`ModelInput.steps` so the page can show
it:

* an alpha channel is flattened onto black (the CLI refuses it rather than guess);
* a colour image for a one-channel model is converted to grey (ITU-R 601-2 luma, PIL's "L");
* the canvas (dark strokes on white) is inverted to light strokes on black, as MNIST digits are;
* ``invert`` (a checkbox) inverts an upload the same way, for a photo of ink on paper.

Safety: a file's size is read from its header before any pixel is decoded; more than
:data:`MAX_PIXELS` pixels (or what PIL considers a decompression bomb) is refused with a message.
Nothing in a file is executed: images are decoded by PIL only.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pellucid.errors import InvalidInputError, PellucidError

__all__ = ["ModelInput", "from_canvas", "from_file", "from_photo", "preview"]

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


@dataclass(frozen=True)
class ModelInput:
    """``x``: ``(1, C, H, W)`` in [0, 1]; ``steps``: how the given image became ``x``, in order."""

    x: torch.Tensor
    steps: tuple[str, ...]
    name: str

    def describe(self) -> str:
        return "\n".join(f"{i}. {s}" for i, s in enumerate(self.steps, 1))


def _max_pixels() -> int:
    from pellucid.data.images import MAX_PIXELS
    return MAX_PIXELS


def _resize_step(shape: tuple[int, int, int]) -> str:
    _, h, w = shape
    return (f"shorter side resized to {h} px (bilinear, antialiased) and centre-cropped to "
            f"{h} x {w}, values scaled to [0, 1] (as `pellucid explain` does)")


def from_file(path: str | Path | None, shape: tuple[int, int, int], *, invert: bool = False) -> ModelInput:
    """An uploaded file as the model's input (``shape`` = ``(C, H, W)``)."""
    from PIL import Image, UnidentifiedImageError

    if path is None or not Path(path).is_file():
        raise InvalidInputError("no image: upload an image file first")
    path = Path(path)
    name = path.name
    limit = _max_pixels()
    try:
        with Image.open(path) as image:  # reads the header: size and mode, no pixels
            width, height, mode, fmt = image.width, image.height, image.mode, image.format
            has_alpha = mode in _ALPHA_MODES or "transparency" in image.info
            if width * height > limit:
                raise InvalidInputError(f"{name} is {width:,} x {height:,} pixels (limit {limit:,}); "
                                        "downscale it first")
            steps = [f"{name}: {width} x {height} {fmt or ''} image, mode {mode}"]
            converted = _convert(image, shape[0], has_alpha, steps)
            if converted is not None:
                return _finish(converted, shape, steps, name, invert)
    except Image.DecompressionBombError:
        raise InvalidInputError(f"{name} has more than {limit:,} pixels (it could be a decompression "
                                "bomb); downscale it first") from None
    except UnidentifiedImageError:
        raise InvalidInputError(f"{name} is not an image file (PNG, JPEG, ...)") from None
    except OSError as e:
        raise InvalidInputError(f"cannot read {name}: {e}") from None
    return _load(str(path), shape, steps, name, invert)


def _convert(image, channels: int, has_alpha: bool, steps: list[str]):
    """The decoded, converted image where the CLI would refuse this one, else ``None`` (the file
    goes to the CLI's loader as it is, which also gives its messages for what the app cannot fix,
    such as 16-bit pixels)."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return None
    accepted = ("L",) if channels == 1 else ("L", "RGB", "P")
    if not has_alpha and image.mode in accepted:
        return None
    image.load()
    if has_alpha:
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        flat.alpha_composite(rgba)
        image = flat.convert("RGB")
        steps.append("alpha channel flattened onto black")
    if channels == 1 and image.mode != "L":
        image = image.convert("L")
        steps.append("converted to grey (luma: 0.299 R + 0.587 G + 0.114 B)")
    elif channels == 3 and image.mode not in ("L", "RGB"):
        steps.append(f"converted from {image.mode} to RGB")
        image = image.convert("RGB")
    return image


def _finish(image, shape, steps: list[str], name: str, invert: bool) -> ModelInput:
    """Save the converted image losslessly and load it as the CLI does."""
    with tempfile.TemporaryDirectory(prefix="pellucid-app-") as tmp:
        path = Path(tmp) / "converted.png"
        image.save(path, format="PNG")
        return _load(str(path), shape, steps, name, invert)


def _load(source: str, shape, steps: list[str], name: str, invert: bool) -> ModelInput:
    from pellucid.data.images import load_image

    try:
        x = load_image(source, tuple(shape))
    except PellucidError as e:  # name the user's file, not the server's copy of it
        raise type(e)(str(e).replace(source, name)) from None
    steps.append(_resize_step(shape))
    if invert:
        x = 1 - x
        steps.append("inverted (1 - x): dark strokes on light paper become light on dark, as in MNIST")
    return ModelInput(x, tuple(steps), name)


def from_photo(name: str, shape: tuple[int, int, int]) -> ModelInput:
    """A photo that ships with scikit-image (``pellucid explain --image skimage:NAME``)."""
    from PIL import Image

    from pellucid.data.images import SKIMAGE_PHOTOS, skimage_photo

    if name not in SKIMAGE_PHOTOS:
        raise InvalidInputError(f"unknown bundled photo {name!r}; choose one of {', '.join(SKIMAGE_PHOTOS)}")
    label = f"skimage:{name}"
    if shape[0] == 3:
        return _load(label, shape, [f"{label}: a photo shipped with scikit-image"], label, False)
    image = Image.fromarray(skimage_photo(name))
    steps = [f"{label}: {image.width} x {image.height} photo shipped with scikit-image, mode {image.mode}"]
    converted = _convert(image, shape[0], False, steps)
    return _finish(converted if converted is not None else image, shape, steps, label, False)


def from_canvas(value: Any, shape: tuple[int, int, int]) -> ModelInput:
    """A drawing from the canvas: ``value`` is Gradio's editor value (a dict whose ``composite`` is
    a ``uint8`` array, dark strokes on white) or such an array."""
    from PIL import Image

    composite = value.get("composite") if isinstance(value, dict) else value
    if composite is None:
        raise InvalidInputError("the canvas is empty: draw a digit first")
    array = np.asarray(composite)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or array.size == 0:
        raise InvalidInputError(f"the canvas sent an unexpected image ({array.dtype}, shape {array.shape})")
    image = Image.fromarray(array)
    if image.mode in _ALPHA_MODES:
        flat = Image.new("RGBA", image.size, (255, 255, 255, 255))
        flat.alpha_composite(image.convert("RGBA"))
        image = flat
    grey = np.asarray(image.convert("L"))
    if int(grey.max()) - int(grey.min()) < 8:
        raise InvalidInputError("the canvas is empty: draw a digit first")
    steps = [f"canvas: {grey.shape[1]} x {grey.shape[0]}, dark strokes on white",
             "inverted to light strokes on black, as MNIST digits are"]
    inverted = Image.fromarray(255 - grey, mode="L")
    if shape[0] == 3:
        inverted = inverted.convert("RGB")
        steps.append("grey copied to R, G and B")
    return _finish(inverted, shape, steps, "canvas", False)


def preview(x: torch.Tensor, min_size: int = 224) -> np.ndarray:
    """``(1, C, H, W)`` in [0, 1] as an ``(H', W', 3)`` uint8 image, small images enlarged by an
    integer factor (nearest neighbour: every model pixel stays a visible square)."""
    img = x.detach().cpu().float()[0].clamp(0, 1)
    factor = max(1, -(-min_size // max(img.shape[-2:])))
    if factor > 1:
        img = img.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return (img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
