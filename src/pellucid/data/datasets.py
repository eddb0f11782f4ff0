"""Image classification datasets as plain tensors, and the registry of dataset loaders."""

from __future__ import annotations

import numbers
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


def check_classes(classes: Sequence[int], n_classes: int | None = None,
                  name: str = "classes") -> tuple[int, ...]:
    """``classes`` as a tuple of ints, or :class:`InvalidInputError` unless it is a non-empty,
    strictly ascending list of distinct integers (within ``0..n_classes-1`` when given).

    Why ascending: label ``i`` always means the ``i``-th smallest class kept, so whoever selects
    the same classes (training, evaluation, a user's script) gets the same labels; an order such
    as ``(5, 3)`` would silently swap the meaning of a trained model's logits.
    """
    if isinstance(classes, torch.Tensor):
        classes = classes.tolist() if classes.dim() == 1 and not classes.is_floating_point() else [classes]
    elif hasattr(classes, "tolist") and not isinstance(classes, (str, bytes)):  # numpy arrays
        classes = classes.tolist()
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence) or not all(
            isinstance(k, numbers.Integral) and not isinstance(k, bool) for k in classes):
        raise InvalidInputError(f"{name} must be a list of integers (original labels), got {classes!r}")
    keep = tuple(int(k) for k in classes)
    if not keep:
        raise InvalidInputError(f"{name} must name at least one class, got an empty list")
    bad = [k for k in keep if k < 0 or (n_classes is not None and k >= n_classes)]
    if bad and n_classes is None:
        raise InvalidInputError(f"{name} {bad} are negative; original labels start at 0")
    if bad:
        raise InvalidInputError(f"{name} {bad} do not exist; this dataset has 0..{n_classes - 1}")
    if len(set(keep)) != len(keep):
        raise InvalidInputError(f"duplicate {name} in {list(keep)}")
    if list(keep) != sorted(keep):
        raise InvalidInputError(
            f"{name} {list(keep)} must be given in ascending order, e.g. {tuple(sorted(keep))}: "
            "label i always means the i-th smallest class kept, so the same classes always get "
            "the same labels")
    return keep


def select_classes(ds: ImageDataset, keep: Sequence[int]) -> ImageDataset:
    """Keep only the original labels in ``keep`` (ascending, see :func:`check_classes`),
    remapped to ``0..len(keep)-1``: label ``i`` is the ``i``-th class of ``keep``."""
    keep = list(check_classes(keep, len(ds.classes)))
    if len(ds) and (int(ds.labels.min()) < 0 or int(ds.labels.max()) >= len(ds.classes)):
        bad = ds.labels[(ds.labels < 0) | (ds.labels >= len(ds.classes))]
        raise InvalidInputError(
            f"{ds.source}: {len(bad)} labels outside 0..{len(ds.classes) - 1} (values "
            f"{sorted(set(bad.tolist()))[:5]}); each label must index one of its {len(ds.classes)} classes")
    on = ds.labels.device
    remap = torch.full((len(ds.classes),), -1, dtype=torch.long, device=on)
    remap[torch.tensor(keep, device=on)] = torch.arange(len(keep), device=on)
    new = remap[ds.labels]
    rows = torch.nonzero(new >= 0).squeeze(1)
    return ImageDataset(ds.images[rows], new[rows], tuple(ds.classes[k] for k in keep), ds.source,
                        ds.index[rows])


# name -> loader(split: str, data_dir: str | None) -> ImageDataset (all classes)
DATASETS: Registry[Callable[..., ImageDataset]] = Registry("dataset")


def load_dataset(name: str, split: str = "train", *, classes: Sequence[int] | None = None,
                 data_dir: str | None = None) -> ImageDataset:
    """Load a registered dataset split, optionally restricted to ``classes`` (ascending original
    labels; label ``i`` of the result is ``classes[i]``, see :func:`select_classes`)."""
    if split not in ("train", "test"):
        raise InvalidInputError(f"split must be 'train' or 'test', got {split!r}")
    ds = DATASETS.get(name)(split, data_dir)
    return select_classes(ds, classes) if classes is not None else ds
