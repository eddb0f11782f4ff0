"""``pellucid explain``: JSON output, the PNG grid, and one-line errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pellucid.data import images as data_images
from pellucid.cli.main import main


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "noise.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
    return path


def _run(capsys, *argv):
    code = main(["explain", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_and_grid(capsys, tmp_path, photo):
    png = tmp_path / "grid.png"
    # random-init ResNet-50 (kaiming init keeps gradients alive; GoogLeNet's std-0.01 init does not)
    code, out, err = _run(capsys, "--model", "resnet50", "--weights", "none", "--image", photo, photo,
                          "--target", "3", "7", "--steps", "2", "--alpha", "5", "--out", png, "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["coverage"]["relu_sites"] == 49 and result["coverage"]["method"] == "fx"
    assert result["forward_max_abs_diff"] == 0.0
    assert result["target"] == [3, 7]
    assert all(a > b for a, b in zip(result["score_after"], result["score_before"]))
    assert png.stat().st_size > 1000 and Image.open(png).format == "PNG"


def test_gradient_method_and_image_target(capsys, photo):
    code, out, err = _run(capsys, "--model", "googlenet", "--weights", "none", "--image", photo,
                          "--target", photo, "--method", "gradient", "--steps", "1", "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["coverage"] is None and result["target"] == [f"cosine({photo})"]
    assert result["score_before"][0] == pytest.approx(1.0, abs=1e-5)  # cosine with itself


def test_untraceable_model_uses_documented_fallback(capsys, tmp_path):
    path = tmp_path / "digit.png"
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(path)
    code, out, err = _run(capsys, "--model", "inh-mnist", "--image", path, "--steps", "1", "--json")
    assert code == 0, err
    assert "falling back" in err and "Traceback" not in err
    assert json.loads(out.strip().splitlines()[-1])["coverage"]["method"] == "module-replacement"


def test_whitebox_model_is_traced_with_every_site(capsys, tmp_path):
    path = tmp_path / "digit.png"
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(path)
    code, out, err = _run(capsys, "--model", "whitebox-mnist35", "--image", path, "--steps", "1", "--json")
    assert code == 0, err
    assert "falling back" not in err and "Traceback" not in err
    coverage = json.loads(out.strip().splitlines()[-1])["coverage"]
    assert coverage["method"] == "fx" and coverage["relu_sites"] == 2 and coverage["maxpool_sites"] == 3
    assert [site["name"] for site in coverage["sites"]] == ["twostep", "conv", "conv", "affine", "affine",
                                                             "logical"]


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data) if isinstance(data, bytes) else data.save(path)
    return path


@pytest.mark.parametrize("case,match", [
    ("text", "not an image file"),
    ("missing", "does not exist"),
    ("rgba", "alpha channel"),
    ("truncated", "cannot read image"),
    ("huge", "downscale"),
    ("target", "out of range"),
    ("model", "neither a model directory nor a registered"),
    ("colour-for-grey", "expects 1-channel"),
])
def test_bad_input_is_one_line_error(capsys, tmp_path, photo, monkeypatch, case, match):
    model, image, extra = "googlenet", photo, ["--target", "3"]
    if case == "text":
        image = _write(tmp_path, "notes.png", b"hello, not a picture")
    elif case == "missing":
        image = tmp_path / "nope.jpg"
    elif case == "rgba":
        image = _write(tmp_path, "a.png", Image.new("RGBA", (30, 30)))
    elif case == "truncated":
        full = _write(tmp_path, "full.png", Image.open(photo).convert("RGB"))
        image = _write(tmp_path, "cut.png", full.read_bytes()[:200])
    elif case == "huge":
        monkeypatch.setattr(data_images, "MAX_PIXELS", 1000)
    elif case == "target":
        extra = ["--target", "1000"]
    elif case == "model":
        model = "resnet9000"
    elif case == "colour-for-grey":
        model, extra = "whitebox-mnist35", []
    code, out, err = _run(capsys, "--model", model, "--weights", "none", "--image", image,
                          "--steps", "1", *extra) if model == "googlenet" else \
        _run(capsys, "--model", model, "--image", image, "--steps", "1", *extra)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and "Traceback" not in err
    assert match in lines[0]


def test_every_registered_method_is_a_cli_method_and_unknown_ones_exit_2(capsys, tmp_path, authors_dir):
    path = tmp_path / "digit.png"
    Image.fromarray((np.arange(28 * 28) % 256).reshape(28, 28).astype(np.uint8)).save(path)
    code, out, err = _run(capsys, "--model", authors_dir, "--image", path, "--method",
                          "integrated-gradients", "--steps", "1", "--json")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["method"] == "integrated-gradients"
    code, out, err = _run(capsys, "--model", authors_dir, "--image", path, "--method", "nope")
    assert code == 2 and "unknown 'nope'" in err and "integrated-gradients" in err
    assert len(err.strip().splitlines()) == 1
