"""The source chain shared by the IDX-format datasets (MNIST, Fashion-MNIST).

In order: the user's directory (``data_dir`` / CLI ``--data-dir`` / ``PELLUCID_DATA_DIR``), the
dataset's offline copies (an embedded package, a Debian package, ...), a torchvision download.
Each dataset describes its own sources with an :class:`IdxSource`; the chain is written once here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pellucid.data.datasets import ImageDataset
from pellucid.data.idx import check_label_range, read_idx_split
from pellucid.errors import DataNotFoundError

Split = tuple[np.ndarray, np.ndarray]  # uint8 images (N, H, W), int64 labels (N,)
STEMS = {"train": "train", "test": "t10k"}  # IDX file name prefixes per split


def cache_dir() -> Path:
    """Where downloads and converted copies are kept (``$XDG_CACHE_HOME/pellucid``)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pellucid"


def from_torchvision(class_name: str, split: str) -> Split | None:
    """``torchvision.datasets.<class_name>(download=True)``, or None when offline or blocked."""
    try:
        import torchvision.datasets

        ds = getattr(torchvision.datasets, class_name)(str(cache_dir()), train=split == "train",
                                                       download=True)
    except Exception:  # offline or blocked: the caller falls through to its clear message
        return None
    return ds.data.numpy(), ds.targets.numpy().astype(np.int64)


@dataclass(frozen=True, eq=False)
class IdxSource:
    """Where one IDX-format dataset can come from.

    ``subdirs``: places under a user directory that may hold the IDX files (torchvision's layout
    among them); ``offline``: ``(label, load(split) -> Split | None)`` tried in order after the user
    directory; ``torchvision_class``: the download of last resort; ``how_to_provide``: the message
    when nothing works; ``n_classes``: labels must lie in ``0..n_classes-1``.
    """

    name: str
    subdirs: tuple[str, ...]
    torchvision_class: str
    how_to_provide: str
    offline: tuple[tuple[str, Callable[[str], Split | None]], ...] = ()
    n_classes: int = 10

    def read_dir(self, root: Path, split: str) -> Split | None:
        return read_idx_split(root, STEMS[split], self.subdirs, n_classes=self.n_classes)

    def load(self, split: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray, str]:
        """``(images, labels, source label)`` of ``split`` from the first source that has it."""
        # the variable is resolved before the cache so that changing it changes the source
        return _load_cached(self, split, data_dir or os.environ.get("PELLUCID_DATA_DIR") or None)

    def images(self, split: str, data_dir: str | None, classes: tuple[str, ...]) -> ImageDataset:
        """All of ``split`` as ``ToTensor()`` images (uint8 / 255) in ``(N, 1, H, W)`` float32."""
        images, labels, source = self.load(split, data_dir)
        check_label_range(labels, len(classes), f"{self.name} {split} split from {source}")
        x = torch.from_numpy(images).to(torch.float32).div_(255.0).unsqueeze(1)  # (N, 1, H, W)
        y = torch.from_numpy(labels)
        return ImageDataset(x, y, classes, source, torch.arange(len(y)))


@lru_cache(maxsize=16)
def _load_cached(source: IdxSource, split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    if data_dir is not None:  # a directory the user named must work, or say why not
        root = Path(data_dir)
        got = source.read_dir(root, split) if root.is_dir() else None
        if got is None:
            raise DataNotFoundError(
                f"no {source.name} IDX files for split {split!r} in {root} (expected "
                f"{STEMS[split]}-images-idx3-ubyte[.gz] and {STEMS[split]}-labels-idx1-ubyte[.gz], "
                f"directly or under one of: {', '.join(d for d in source.subdirs if d)})")
        return (*got, f"idx:{root}")
    for label, load in source.offline:
        got = load(split)
        if got is not None:
            return (*got, label)
    got = from_torchvision(source.torchvision_class, split)
    if got is not None:
        return (*got, "torchvision")
    raise DataNotFoundError(source.how_to_provide)


def clear_cache() -> None:
    """Forget loaded splits (e.g. after the files on disk changed)."""
    _load_cached.cache_clear()
