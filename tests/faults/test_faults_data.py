"""Issue 17, items 11 and 12 (data side): IDX files with the wrong dtype or labels, class order."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from pellucid.data import ImageDataset, load_dataset, select_classes
from pellucid.data import sources
from pellucid.data.idx import read_idx_split
from pellucid.errors import DataNotFoundError, InvalidInputError

_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype("i2"): 0x0B, np.dtype("i4"): 0x0C,
          np.dtype("f4"): 0x0D, np.dtype("f8"): 0x0E}


def _write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    """Write ``array`` as an IDX file, its type code taken from its dtype (big-endian on disk)."""
    code = _CODES[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def _write_split(root, images: np.ndarray, labels: np.ndarray, stem: str = "t10k") -> tuple:
    img, lab = root / f"{stem}-images-idx3-ubyte", root / f"{stem}-labels-idx1-ubyte"
    _write_idx(img, images)
    _write_idx(lab, labels)
    return img, lab


def _good(n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8)


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch):
    """No split loaded by another test (or an earlier step of this one) may answer for the files."""
    monkeypatch.delenv("PELLUCID_DATA_DIR", raising=False)
    sources.clear_cache()
    yield
    sources.clear_cache()


def test_item11_valid_idx_files_still_load(tmp_path):
    images, labels = _good()
    _write_split(tmp_path, images, labels)
    ds = load_dataset("mnist", "test", data_dir=str(tmp_path))
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images).float() / 255)
    assert ds.labels.tolist() == labels.tolist()
    # signed int8 labels within range are integers too: accepted
    _write_split(tmp_path, images, labels.astype(np.int8))
    sources.clear_cache()
    assert load_dataset("mnist", "test", data_dir=str(tmp_path)).labels.tolist() == labels.tolist()


@pytest.mark.parametrize("dtype", ["f4", "f8"])
def test_item11_float_idx_images_raise(tmp_path, dtype):
    images, labels = _good()
    img, _ = _write_split(tmp_path, (images / 255.0).astype(dtype), labels)
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("mnist", "test", data_dir=str(tmp_path))
    msg = str(err.value)
    assert img.name in msg and ("float32" if dtype == "f4" else "float64") in msg and "uint8" in msg


@pytest.mark.parametrize("dtype,rows,value,count", [
    (np.int8, [4], -1, "1 label"),  # int8 -1 was silently dropped
    (np.uint8, [2, 7], 200, "2 labels"),  # 200 raised an IndexError deep inside
])
def test_item11_out_of_range_labels_raise_naming_file_value_and_count(tmp_path, dtype, rows, value, count):
    images, labels = _good()
    labels = labels.astype(dtype)
    labels[rows] = value
    _, lab = _write_split(tmp_path, images, labels)
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("mnist", "test", classes=(3, 5), data_dir=str(tmp_path))
    msg = str(err.value)
    assert lab.name in msg and str(value) in msg and count in msg and "0..9" in msg


def test_item11_float_labels_raise(tmp_path):
    images, labels = _good()
    _, lab = _write_split(tmp_path, images, labels.astype("f4"))
    with pytest.raises(DataNotFoundError, match=lab.name) as err:
        load_dataset("mnist", "test", data_dir=str(tmp_path))
    assert "float32" in str(err.value)


def test_item11_read_idx_split_checks_the_class_range(tmp_path):
    images, labels = _good()
    labels[0] = 10
    _, lab = _write_split(tmp_path, images, labels, stem="train")
    # without a class count the file is still rejected for a non-integer dtype only
    got = read_idx_split(tmp_path, "train", ("",))
    assert got is not None and got[1][0] == 10
    with pytest.raises(DataNotFoundError, match=f"{lab.name}.*10"):
        read_idx_split(tmp_path, "train", ("",), n_classes=10)


def test_item11_fashion_mnist_files_are_checked_too(tmp_path):
    images, labels = _good()
    labels[3] = 11
    _write_split(tmp_path, images, labels)
    with pytest.raises(DataNotFoundError, match="11"):
        load_dataset("fashion-mnist", "test", data_dir=str(tmp_path))


def test_item11_rewritten_files_are_read_again_after_clear_cache(tmp_path):
    images, labels = _good()
    _write_split(tmp_path, images, labels)
    assert len(load_dataset("mnist", "test", data_dir=str(tmp_path))) == len(labels)
    labels[0] = 200
    _write_split(tmp_path, images, labels)
    sources.clear_cache()
    with pytest.raises(DataNotFoundError, match="200"):
        load_dataset("mnist", "test", data_dir=str(tmp_path))


def test_item11_select_classes_rejects_labels_outside_the_dataset():
    ds = ImageDataset(torch.zeros(3, 1, 2, 2), torch.tensor([0, 1, 7]), ("a", "b"), "synthetic",
                      torch.arange(3))
    with pytest.raises(InvalidInputError, match="7"):
        select_classes(ds, (0, 1))


def test_item12_descending_classes_are_refused(tmp_path):
    _write_split(tmp_path, *_good())
    with pytest.raises(InvalidInputError, match="ascending") as err:
        load_dataset("mnist", "test", classes=(5, 3), data_dir=str(tmp_path))
    assert "(3, 5)" in str(err.value)


def test_item12_ascending_classes_define_the_labels(tmp_path):
    images, labels = _good()
    _write_split(tmp_path, images, labels)
    ds = load_dataset("mnist", "test", classes=(3, 5), data_dir=str(tmp_path))
    assert ds.classes == ("3", "5")
    originals = labels[ds.index.numpy()]
    assert ds.labels.tolist() == [0 if o == 3 else 1 for o in originals]  # label i = i-th smallest
    assert sorted(set(originals.tolist())) == [3, 5]


@pytest.mark.parametrize("classes,needle", [
    ((3, 3), "duplicate"), ((3, 11), "0..9"), ((-1, 3), "0..9"), ((), "at least one"),
    ("35", "integers"), ((3.0, 5.0), "integers"), ((True, 5), "integers"), ([[3], [5]], "integers"),
])
def test_item12_bad_class_lists_are_clear_errors(classes, needle):
    ds = ImageDataset(torch.zeros(4, 1, 2, 2), torch.tensor([3, 5, 1, 9]), tuple("0123456789"),
                      "synthetic", torch.arange(4))
    with pytest.raises(InvalidInputError, match=needle):
        select_classes(ds, classes)


def test_item12_numpy_and_tensor_integer_classes_are_accepted():
    ds = ImageDataset(torch.zeros(4, 1, 2, 2), torch.tensor([3, 5, 1, 9]), tuple("0123456789"),
                      "synthetic", torch.arange(4))
    for keep in (np.array([3, 5]), torch.tensor([3, 5]), [np.int64(3), 5]):
        out = select_classes(ds, keep)
        assert out.labels.tolist() == [0, 1] and out.classes == ("3", "5")
