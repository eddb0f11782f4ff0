"""CIFAR-10 from a user directory (torchvision's ``cifar-10-batches-py`` layout) or a download.

No offline copy exists here; tests use synthetic tensors. ``data_dir`` (or ``PELLUCID_DATA_DIR``)
must contain ``cifar-10-batches-py/`` (or be it); otherwise torchvision downloads it when online.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from pellucid.data.datasets import DATASETS, ImageDataset
from pellucid.errors import DataNotFoundError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")


@lru_cache(maxsize=2)
def _load_uint8(split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    from torchvision.datasets import CIFAR10

    data_dir = data_dir or os.environ.get("PELLUCID_DATA_DIR") or None
    roots = []
    if data_dir is not None:
        root = Path(data_dir)
        roots = [root.parent if root.name == "cifar-10-batches-py" else root]
    for root in roots:
        try:
            ds = CIFAR10(str(root), train=split == "train", download=False)
            return ds.data, np.asarray(ds.targets, dtype=np.int64), f"dir:{root}"
        except RuntimeError:
            raise DataNotFoundError(f"no CIFAR-10 (cifar-10-batches-py) in {root}") from None
    try:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pellucid"
        ds = CIFAR10(str(cache), train=split == "train", download=True)
    except Exception:
        raise DataNotFoundError("CIFAR-10 not found: pass --data-dir DIR holding "
                                "cifar-10-batches-py/, or go online so torchvision can download it") from None
    return ds.data, np.asarray(ds.targets, dtype=np.int64), "torchvision"


@DATASETS.register("cifar10", "CIFAR-10, 32x32 colour, 10 classes (user directory or download)")
def load_cifar10(split: str = "train", data_dir: str | None = None) -> ImageDataset:
    """CIFAR-10 ``split`` as images in [0, 1], ``(N, 3, 32, 32)`` float32."""
    images, labels, source = _load_uint8(split, data_dir)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)  # (N, 3, 32, 32)
    y = torch.from_numpy(labels)
    return ImageDataset(x, y, CIFAR10_CLASSES, source, torch.arange(len(y)))
