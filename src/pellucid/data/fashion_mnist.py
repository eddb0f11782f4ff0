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
from pathlib import Path


from pellucid.data.datasets import DATASETS, ImageDataset
from pellucid.data.idx import find_idx_pair
from pellucid.data.sources import IdxSource, Split

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_SUBDIRS = ("", "FashionMNIST/raw", "raw", "fashion-mnist")
_HOW_TO_PROVIDE = (
    "Fashion-MNIST not found. Provide it one of three ways: (1) --data-dir DIR or "
    "PELLUCID_DATA_DIR=DIR pointing at the four IDX files (train-images-idx3-ubyte[.gz], ...); "
    "(2) apt-get install dataset-fashion-mnist (offline, Debian/Ubuntu); (3) go online so "
    "torchvision can download it")


def _debian_split(split: str) -> Split | None:
    return FASHION_MNIST_SOURCE.read_dir(DEBIAN_DIR, split) if DEBIAN_DIR.is_dir() else None


FASHION_MNIST_SOURCE = IdxSource("Fashion-MNIST", _SUBDIRS, "FashionMNIST", _HOW_TO_PROVIDE,
                                 offline=((f"debian:{DEBIAN_DIR}", _debian_split),))


def fashion_mnist_available(data_dir: str | None = None) -> bool:
    """Whether :func:`load_fashion_mnist` can work without a download (tests skip otherwise)."""
    root = data_dir or os.environ.get("PELLUCID_DATA_DIR")
    return any(find_idx_pair(Path(r), "t10k", _SUBDIRS) is not None
               for r in ([root] if root else []) + [str(DEBIAN_DIR)] if Path(r).is_dir())


@DATASETS.register("fashion-mnist", "Fashion-MNIST clothing images, 28x28 grey, 10 classes")
def load_fashion_mnist(split: str = "train", data_dir: str | None = None) -> ImageDataset:
    """All of Fashion-MNIST's ``split`` as images in [0, 1], ``(N, 1, 28, 28)`` float32."""
    return FASHION_MNIST_SOURCE.images(split, data_dir, FASHION_MNIST_CLASSES)
