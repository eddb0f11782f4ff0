"""Image classification datasets as plain tensors, and the registry of dataset loaders."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from pellucid._registry import Registry
from pellucid.errors import InvalidInputError


@dataclass(frozen=True)
class ImageDataset:
    """Images in [0, 1] as ``(N, C, H, W)`` float32 and integer labels in ``0..K-1``.

    ``classes[k]`` names label ``k``; ``index`` maps each row to its position in the original
    split (useful to line results up with published outputs).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    source: str
    index: torch.Tensor = field(repr=False)

    def __post_init__(self) -> None:
        assert self.images.shape[0] == self.labels.shape[0] == self.index.shape[0]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, rows: torch.Tensor | slice) -> "ImageDataset":
        return ImageDataset(self.images[rows], self.labels[rows], self.classes, self.source,
                            self.index[rows])

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()


def select_classes(ds: ImageDataset, keep: Sequence[int]) -> ImageDataset:
    """Keep only the original labels in ``keep``, remapped to ``0..len(keep)-1`` in that order."""
    keep = list(keep)
    if len(set(keep)) != len(keep):
        raise InvalidInputError(f"duplicate classes in {keep}")
    bad = [k for k in keep if not 0 <= k < len(ds.classes)]
    if bad:
        raise InvalidInputError(f"classes {bad} do not exist; this dataset has 0..{len(ds.classes) - 1}")
    remap = torch.full((len(ds.classes),), -1, dtype=torch.long)
    remap[torch.tensor(keep)] = torch.arange(len(keep))
    new = remap[ds.labels]
    rows = torch.nonzero(new >= 0).squeeze(1)
    return ImageDataset(ds.images[rows], new[rows], tuple(ds.classes[k] for k in keep), ds.source,
                        ds.index[rows])


# name -> loader(split: str, data_dir: str | None) -> ImageDataset (all classes)
DATASETS: Registry[Callable[..., ImageDataset]] = Registry("dataset")


def load_dataset(name: str, split: str = "train", *, classes: Sequence[int] | None = None,
                 data_dir: str | None = None) -> ImageDataset:
    """Load a registered dataset split, optionally restricted (and remapped) to ``classes``."""
    if split not in ("train", "test"):
        raise InvalidInputError(f"split must be 'train' or 'test', got {split!r}")
    ds = DATASETS.get(name)(split, data_dir)
    return select_classes(ds, classes) if classes is not None else ds
