"""Bad input in the app: a readable message in the tab's status box, outputs cleared, no exception
(so no traceback in the server log), and the next good request still works."""

from __future__ import annotations

import logging
import struct
import time
import zlib

import numpy as np
import pytest

from pellucid.app import layout


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header(width: int, height: int) -> bytes:
    """A grey PNG that declares ``width x height`` but holds almost no data: PIL reads the size
    from the header without decoding, so a huge declared size costs nothing to make."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("bad")
    files = {"text": out / "notes.png", "huge": out / "huge.png", "large": out / "large.png",
             "corrupt": out / "corrupt.png", "truncated": out / "truncated.png",
             "sixteen": out / "deep.png"}
    files["text"].write_text("this is not an image\n")
    files["huge"].write_bytes(_png_header(20_000, 20_000))
    files["large"].write_bytes(_png_header(8_000, 8_000))  # over pellucid's limit, under PIL's
    data = bytearray(digits["3"][0].read_bytes())
    start = data.index(b"IDAT") + 4
    for i in range(start, min(start + 120, len(data) - 12)):
        data[i] ^= 0x5A
    files["corrupt"].write_bytes(bytes(data))
    files["truncated"].write_bytes(digits["3"][0].read_bytes()[:120])
    from PIL import Image
    Image.fromarray(np.full((28, 28), 1000, dtype=np.uint16)).save(files["sixteen"])
    return files


EXPECTED = {"text": "not an image file", "huge": "50,000,000 pixels", "large": "8,000 x 8,000 pixels",
            "corrupt": "cannot read", "truncated": "cannot read", "sixteen": "8-bit"}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_bad_uploads_give_a_message_in_every_tab(cache, authors_dir, dictionary_dir, bad_files, kind, caplog):
    path = str(bad_files[kind])
    start = time.perf_counter()
    with caplog.at_level(logging.ERROR, logger="pellucid.app"):
        outputs = [layout.inspect_upload(cache, str(authors_dir), path, False),
                   layout.run_pullback(cache, str(authors_dir), path, None, "top class", 0, "", None, None,
                                       "pullback", 0.3, "sigmoid", 2, 20.0, 0),
                   layout.reject_input(cache, str(dictionary_dir), "upload", path, None, 1.0)]
    assert time.perf_counter() - start < 10  # refused from the header, never decoded
    for out in outputs:
        status = out[-1]
        assert status.startswith("**Error:**") and EXPECTED[kind] in status, status
        assert bad_files[kind].name in status and "/tmp" not in status  # the user's name, not the server's path
        assert all(v is None for v in out[:-1])
    assert not caplog.records  # user errors are not logged as internal errors


def test_empty_canvas_and_missing_inputs(cache, authors_dir, dictionary_dir):
    blank = np.full((280, 280), 255, dtype=np.uint8)
    for canvas in (None, {"composite": None}, {"composite": blank}):
        assert "canvas is empty" in layout.inspect_canvas(cache, str(authors_dir), canvas)[-1]
    assert "upload an image" in layout.inspect_upload(cache, str(authors_dir), None, False)[-1]
    assert "nothing to attack" in layout.run_attack(cache, str(authors_dir), None, 0.3, 40)[-1]
    assert "pellucid demo" in layout.inspect_upload(cache, None, None, False)[-1]
    assert "no input yet" in layout.reject_input(cache, str(dictionary_dir), "again", None, None, 1.0)[-1]
    assert "pellucid train dictionary-mlp" in layout.reject_input(cache, None, "noise", None, None, 1.0)[-1]


def test_unknown_unit_path_and_bad_targets(cache, authors_dir, digits):
    image = str(digits["5"][0])

    def status(kind, class_index=0, unit=""):
        return layout.run_pullback(cache, str(authors_dir), image, None, kind, class_index, unit, None, None,
                                   "pullback", 0.3, "sigmoid", 2, 20.0, 0)[-1]

    message = status("hidden unit", unit="features.9:1")
    assert "no module 'features.9'" in message and "affine" in message  # names the valid paths
    assert "channel" in status("hidden unit", unit="affine:99")
    assert "PATH:CHANNEL" in status("hidden unit", unit="")
    assert "out of range" in status("class index", class_index=7)
    assert "must be an integer" in status("class index", class_index="two")
    assert "alpha: enter a number" in layout.run_pullback(cache, str(authors_dir), image, None, "top class", 0,
                                                          "", None, None, "pullback", 0.3, "sigmoid", 2,
                                                          None, 0)[-1]
    assert "no image" in layout.run_pullback(cache, str(authors_dir), None, None, "top class", 0, "", None,
                                             None, "pullback", 0.3, "sigmoid", 2, 20.0, 0)[-1]


def test_wrong_model_for_a_tab(cache, authors_dir, dictionary_dir):
    assert "cannot reject" in layout.reject_input(cache, str(authors_dir), "noise", None, None, 1.0)[-1]
    # a model without ReLUs is explained anyway, with a note that the pullback is the gradient
    out = layout.run_pullback(cache, str(dictionary_dir), None, "chelsea", "top class", 0, "", None, None,
                              "pullback", 0.3, "sigmoid", 1, 20.0, 0)
    assert out[-1].startswith("**dictionary-mlp") and "equals the plain gradient" in out[-1]


def test_an_internal_error_is_logged_and_reported_and_the_next_request_works(cache, authors_dir, digits,
                                                                             monkeypatch, caplog):
    from pellucid.app import inspector

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(inspector, "inspect", broken)
    with caplog.at_level(logging.ERROR, logger="pellucid.app"):
        status = layout.inspect_upload(cache, str(authors_dir), str(digits["3"][0]), False)[-1]
    assert "Internal error" in status and "simulated bug" in status
    assert any("simulated bug" in str(r.exc_info[1]) for r in caplog.records)
    monkeypatch.undo()
    assert "Prediction: 3" in layout.inspect_upload(cache, str(authors_dir), str(digits["3"][0]), False)[-1]


def test_stop_flag_stops_the_counterfactual(cache, authors_dir, digits):
    flag = layout.CancelFlag()
    calls = []

    def progress(fraction, desc=""):
        calls.append(desc)
        if "step 2" in desc:
            flag.event.set()  # the user presses Stop while step 2 runs

    out = layout.run_pullback(cache, str(authors_dir), str(digits["5"][0]), None, "top class", 0, "", None,
                              None, "pullback", 0.3, "sigmoid", 10, 20.0, 0, flag, progress)
    assert out[-1] == "Stopped." and not any("step 4" in c for c in calls)
    import copy
    assert not copy.deepcopy(flag).event.is_set()  # each session starts with its own, unset flag
