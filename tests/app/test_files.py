"""The page's image files: whole PNGs under fresh names, old ones swept, the directory removed."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from pellucid.app.files import ImageFiles


@pytest.fixture
def files():
    f = ImageFiles()
    yield f
    f.close()


def _image(seed: int, shape=(20, 30, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("shape", [(20, 30, 3), (28, 28)])
def test_png_round_trips_the_array_exactly(files, shape):
    img = _image(0, shape)
    path = files.png(img)
    assert os.path.dirname(path) == str(files.dir) and path.endswith(".png")
    assert np.array_equal(np.asarray(Image.open(path)), img)


def test_the_same_image_twice_gets_two_files(files):
    img = _image(1)
    a, b = files.png(img), files.png(img)
    assert a != b and open(a, "rb").read() == open(b, "rb").read()


def test_concurrent_writers_of_one_image_each_get_a_whole_file(files):
    img = _image(2, (200, 200, 3))
    barrier = threading.Barrier(8)
    paths = []

    def write():
        barrier.wait()
        paths.append(files.png(img))

    threads = [threading.Thread(target=write) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 8
    for p in paths:
        assert np.array_equal(np.asarray(Image.open(p)), img)


def test_convert_writes_images_and_slider_pairs_and_leaves_the_rest(files):
    a, b = _image(3), _image(4)
    state = np.zeros((1, 1, 28, 28), dtype=np.float32)
    out = files.convert(["image", None, "pair", "pair", None, "image"],
                        [a, "text", (a, b), None, state, None])
    assert isinstance(out[0], str) and np.array_equal(np.asarray(Image.open(out[0])), a)
    assert out[1] == "text" and out[3] is None and out[5] is None
    assert out[4] is state  # a state array stays an array
    assert [np.array_equal(np.asarray(Image.open(p)), x) for p, x in zip(out[2], (a, b))] == [True, True]
    with pytest.raises(ValueError, match="2 outputs for 3 components"):
        files.convert(["image", None, None], [a, None])


def test_old_files_are_swept_on_later_writes_and_new_ones_kept(files):
    old = files.png(_image(5))
    stale = time.time() - files.keep_seconds - 5
    os.utime(old, (stale, stale))
    recent = files.png(_image(6))
    newest = files.png(_image(7))
    assert not os.path.exists(old)
    assert os.path.exists(recent) and os.path.exists(newest)


def test_close_removes_the_directory_and_is_idempotent():
    f = ImageFiles()
    f.png(_image(8))
    f.close()
    assert not f.dir.exists()
    f.close()


def test_a_failed_write_leaves_no_file(files, monkeypatch):
    def disk_full(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        files.png(_image(9))
    assert list(files.dir.iterdir()) == []
