"""Fashion-MNIST from, in order: a directory of IDX files, the Debian package, torchvision.

1. ``data_dir`` (CLI ``--data-dir``) or ``PELLUCID_DATA_DIR``: the four IDX files, plain or ``.gz``,
   directly or in torchvision's ``FashionMNIST/raw`` layout.
2. ``/usr/share/datasets/fashion-mnist`` from ``apt-get install dataset-fashion-mnist`` (offline).
   Its gzip headers differ from the originals, so torchvision's checksums reject it; it is read
   here directly as IDX.
3. ``torchvision.datasets.FashionMNIST(download=True)`` when the machine is online.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from pellucid.data.datasets import DATASETS, ImageDataset
from pellucid.data.idx import find_idx_pair, read_idx_split
from pellucid.errors import DataNotFoundError

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_STEMS = {"train": "train", "test": "t10k"}
_SUBDIRS = ("", "FashionMNIST/raw", "raw", "fashion-mnist")
_HOW_TO_PROVIDE = (
    "Fashion-MNIST not found. Provide it one of three ways: (1) --data-dir DIR or "
    "PELLUCID_DATA_DIR=DIR pointing at the four IDX files (train-images-idx3-ubyte[.gz], ...); "
    "(2) apt-get install dataset-fashion-mnist (offline, Debian/Ubuntu); (3) go online so "
    "torchvision can download it")


def _from_idx_dir(root: Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    return read_idx_split(root, _STEMS[split], _SUBDIRS)


def _from_torchvision(split: str) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        from torchvision.datasets import FashionMNIST
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pellucid"
        ds = FashionMNIST(str(cache), train=split == "train", download=True)
    except Exception:  # offline or blocked: fall through to the clear message
        return None
    return ds.data.numpy(), ds.targets.numpy().astype(np.int64)


@lru_cache(maxsize=4)
def _load_uint8(split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    if data_dir is not None:
        root = Path(data_dir)
        got = _from_idx_dir(root, split) if root.is_dir() else None
        if got is None:
            raise DataNotFoundError(f"no Fashion-MNIST IDX files for split {split!r} in {root} "
                                    f"(expected {_STEMS[split]}-images-idx3-ubyte[.gz] and "
                                    f"{_STEMS[split]}-labels-idx1-ubyte[.gz])")
        return (*got, f"idx:{root}")
    if DEBIAN_DIR.is_dir():
        got = _from_idx_dir(DEBIAN_DIR, split)
        if got is not None:
            return (*got, f"debian:{DEBIAN_DIR}")
    got = _from_torchvision(split)
    if got is not None:
        return (*got, "torchvision")
    raise DataNotFoundError(_HOW_TO_PROVIDE)


def fashion_mnist_available(data_dir: str | None = None) -> bool:
    """Whether :func:`load_fashion_mnist` can work without a download (tests skip otherwise)."""
    root = data_dir or os.environ.get("PELLUCID_DATA_DIR")
    return any(find_idx_pair(Path(r), "t10k", _SUBDIRS) is not None
               for r in ([root] if root else []) + [str(DEBIAN_DIR)] if Path(r).is_dir())


@DATASETS.register("fashion-mnist", "Fashion-MNIST clothing images, 28x28 grey, 10 classes")
def load_fashion_mnist(split: str = "train", data_dir: str | None = None) -> ImageDataset:
    """All of Fashion-MNIST's ``split`` as images in [0, 1], ``(N, 1, 28, 28)`` float32."""
    # resolved before the cache so that changing the variable changes the source
    images, labels, source = _load_uint8(split, data_dir or os.environ.get("PELLUCID_DATA_DIR") or None)
    x = torch.from_numpy(images).to(torch.float32).div_(255.0).unsqueeze(1)  # (N, 1, 28, 28)
    y = torch.from_numpy(labels)
    return ImageDataset(x, y, FASHION_MNIST_CLASSES, source, torch.arange(len(y)))
