"""Reader for the IDX format of MNIST-style datasets (optionally gzip-compressed)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from pellucid.errors import DataFormatError, DataNotFoundError

# IDX type codes -> numpy dtypes (big-endian on disk)
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path | str) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain). Raises :class:`DataFormatError` if it is corrupt."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        error = DataFormatError if path.is_file() else DataNotFoundError  # e.g. a damaged .gz
        raise error(f"cannot read IDX file {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataFormatError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataFormatError(
            f"{path} is truncated or corrupt: header promises {expected} bytes of data, "
            f"file holds {len(data) - header}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_idx_pair(root: Path, stem: str, subdirs: tuple[str, ...]) -> tuple[Path, Path] | None:
    """Find ``{stem}-images-idx3-ubyte[.gz]`` and the matching labels file under ``root``.

    ``subdirs`` are searched in order (e.g. ``("", "MNIST/raw")`` for torchvision's layout).
    """
    for sub in subdirs:
        d = root / sub
        found = []
        for kind in ("images-idx3", "labels-idx1"):
            base = d / f"{stem}-{kind}-ubyte"
            hit = next((p for p in (base, base.with_name(base.name + ".gz")) if p.is_file()), None)
            found.append(hit)
        if all(found):
            return found[0], found[1]
    return None


def read_idx_split(root: Path, stem: str, subdirs: tuple[str, ...],
                   image_shape: tuple[int, ...] = (28, 28),
                   n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """uint8 images ``(N, *image_shape)`` and int64 labels of one split, or None if absent.

    Images must be stored as uint8 (IDX type 0x08): other types would not scale to [0, 1] the way
    ``ToTensor`` does. Labels must be integers, and within ``0..n_classes-1`` when ``n_classes`` is
    given. Any other content raises :class:`DataFormatError` naming the file.
    """
    pair = find_idx_pair(root, stem, subdirs)
    if pair is None:
        return None
    images, labels = read_idx(pair[0]), read_idx(pair[1])
    if images.dtype != np.uint8:
        raise DataFormatError(
            f"{pair[0]} holds {images.dtype.name} images; image files must be uint8 (IDX type 0x08, "
            "pixel values 0..255): convert them with np.rint(x * 255).astype(np.uint8) for x in [0, 1]")
    if labels.dtype.kind not in "iu":
        raise DataFormatError(
            f"{pair[1]} holds {labels.dtype.name} labels; label files must hold integers (IDX type "
            "0x08, 0x09, 0x0B or 0x0C)")
    if images.shape[1:] != image_shape or labels.shape != (images.shape[0],):
        raise DataFormatError(f"IDX files in {root} do not hold {'x'.join(map(str, image_shape))} "
                              "images with one label each")
    labels = labels.astype(np.int64)
    if n_classes is not None:
        check_label_range(labels, n_classes, str(pair[1]))
    return images, labels


def check_label_range(labels: np.ndarray, n_classes: int, where: str) -> None:
    """Raise :class:`DataFormatError` unless every label lies in ``0..n_classes-1``."""
    bad = (labels < 0) | (labels >= n_classes)
    count = int(bad.sum())
    if count:
        values = np.unique(labels[bad])
        shown = ", ".join(str(int(v)) for v in values[:5]) + (" ..." if len(values) > 5 else "")
        raise DataFormatError(
            f"{where} holds {count} label{'s' if count != 1 else ''} outside 0..{n_classes - 1} "
            f"(values {shown}); each label must be the index of one of the {n_classes} classes")
