"""Image files and bundled photos as model inputs: the one conversion used by ``pellucid explain``,
``pellucid explain-bench`` and the app.

A file is opened lazily (its size is read from the header and checked before any pixel is
decoded), converted to the model's channels without guessing (alpha, 16-bit and colour-for-grey
inputs are refused with a message), resized on its shorter side and centre-cropped.
"""

from __future__ import annotations

from pathlib import Path

MAX_PIXELS = 50_000_000  # larger images are refused before decoding
SKIMAGE_PHOTOS = ("astronaut", "camera", "cat", "chelsea", "coffee", "coins", "moon", "rocket", "page",
                  "text", "horse", "immunohistochemistry", "hubble_deep_field", "logo", "retina")


def check_image_source(source: str, option: str) -> None:
    """``source`` names an existing file or a known ``skimage:NAME`` (not decoded here)."""
    from pellucid.errors import DataNotFoundError, InvalidInputError

    if source.startswith("skimage:"):
        name = source.split(":", 1)[1]
        if name not in SKIMAGE_PHOTOS:
            raise InvalidInputError(f"{option}: unknown scikit-image photo {name!r}; try one of "
                                    f"{', '.join(SKIMAGE_PHOTOS)}")
        return
    if not Path(source).is_file():
        if option == "--target":
            raise InvalidInputError(f"--target {source!r} is neither a class/unit index (0, 1, ...) "
                                    "nor an image file (or skimage:NAME)")
        raise DataNotFoundError(f"{option} {source} does not exist or is not a file")


def load_image(source: str, shape: tuple[int, int, int]):
    """``(1, C, H, W)`` float in [0, 1]: shorter side resized to H, centre crop to ``(H, W)``."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image, UnidentifiedImageError

    from pellucid.errors import DataNotFoundError, InvalidInputError

    channels, height, width = shape
    if source.startswith("skimage:"):
        array = skimage_photo(source.split(":", 1)[1])
        image = Image.fromarray(array)
    else:
        path = Path(source)
        if not path.is_file():
            raise DataNotFoundError(f"image {source} does not exist or is not a file")
        try:
            image = Image.open(path)
            if image.width * image.height > MAX_PIXELS:
                raise InvalidInputError(f"image {source} is {image.width} x {image.height} pixels "
                                        f"(limit {MAX_PIXELS:,}); downscale it first")
            image.load()
        except UnidentifiedImageError:
            raise InvalidInputError(f"{source} is not an image file PIL can read (PNG, JPEG, ...)") from None
        except Image.DecompressionBombError:
            raise InvalidInputError(f"image {source} is too large to decode safely; downscale it "
                                    "first") from None
        except OSError as e:
            raise InvalidInputError(f"cannot read image {source}: {e}") from None
    image = _to_channels(image, channels, source)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()) / 255.0
    x = x.unsqueeze(-1) if x.dim() == 2 else x
    x = x.permute(2, 0, 1).unsqueeze(0)  # (H, W, C) -> (1, C, H, W)
    scale = max(height / x.shape[-2], width / x.shape[-1])
    size = (max(height, round(x.shape[-2] * scale)), max(width, round(x.shape[-1] * scale)))
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return x[..., top:top + height, left:left + width].clamp(0, 1).contiguous()


def _to_channels(image, channels: int, source: str):
    from pellucid.errors import InvalidInputError

    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        raise InvalidInputError(f"{source} has an alpha channel; flatten it onto a background first "
                                "(dropping it silently could change the explanation)")
    if image.mode == "P":
        image = image.convert("RGB")
    if image.mode in ("I;16", "I", "F"):
        raise InvalidInputError(f"{source} has {image.mode} pixels; convert it to 8-bit first")
    if channels == 3:
        if image.mode == "L":
            return image.convert("RGB")  # grey -> equal R, G, B
        if image.mode != "RGB":
            raise InvalidInputError(f"{source} has mode {image.mode}; the model expects RGB images")
        return image
    if channels == 1:
        if image.mode == "L":
            return image
        import numpy as np
        rgb = np.asarray(image.convert("RGB"))
        if (rgb == rgb[..., :1]).all():
            return image.convert("L")
        raise InvalidInputError(f"{source} is a colour image but the model expects 1-channel "
                                "(greyscale) images; convert it first")
    raise InvalidInputError(f"the model expects {channels}-channel inputs; image files give 1 or 3")


def skimage_photo(name: str):
    from pellucid.errors import DataNotFoundError, InvalidInputError

    if name not in SKIMAGE_PHOTOS:
        raise InvalidInputError(f"unknown scikit-image photo {name!r}; try one of "
                                f"{', '.join(SKIMAGE_PHOTOS)}")
    try:
        from skimage import data
        array = getattr(data, name)()
    except ImportError:
        raise DataNotFoundError("skimage:NAME needs scikit-image (pip install scikit-image)") from None
    except Exception as e:  # photos that need a download (pooch) fail offline
        raise DataNotFoundError(f"scikit-image photo {name!r} is not available offline ({e})") from None
    if array.dtype != "uint8":
        raise InvalidInputError(f"scikit-image photo {name!r} is not an 8-bit image")
    return array
