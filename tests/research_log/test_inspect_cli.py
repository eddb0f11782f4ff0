"""``pellucid inspect``: the noise-gradient grid, --json, --list, and one-line errors that write
nothing and come before any work."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import pellucid.models
from pellucid.cli.main import main
from pellucid.explain import unit_gradients_on_noise
from pellucid.models import create_model, load_model, save_model

DATA = {"data": {"dataset": "mnist", "classes": [3, 5]}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    for name in ("lenet-mnist35", "whitebox-mnist35"):
        save_model(create_model(name), root / name, name, extra=DATA)
    return root


def _run(capsys, *argv):
    code = main(["inspect", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _files(path):
    return sorted(p.relative_to(path) for p in path.rglob("*"))


def test_writes_the_grid_into_the_run_directory(capsys, runs):
    run = runs / "lenet-mnist35"
    code, out, err = _run(capsys, run, "--unit", "features.3:7", "--n", "4")
    assert code == 0, err
    png = run / "units" / "features.3-7.png"
    assert Image.open(png).format == "PNG" and png.stat().st_size > 5000
    assert out.strip().splitlines()[-1].endswith(f"wrote {png}")
    assert "features.3:7@5,5" in out  # the centre of the 10 x 10 map


def test_json_matches_the_api(capsys, runs, tmp_path):
    run = runs / "lenet-mnist35"
    out_file = tmp_path / "sub" / "grid.pdf"
    code, out, err = _run(capsys, run, "--unit", "classifier.3:11", "--n", "3", "--seed", "5",
                          "--out", out_file, "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["unit"] == "classifier.3:11" and result["n"] == 3 and result["seed"] == 5
    assert result["file"] == str(out_file) and out_file.read_bytes().startswith(b"%PDF")
    model, _ = load_model(run)
    expected = unit_gradients_on_noise(model, "classifier.3:11", 3, 5, input_shape=(1, 28, 28),
                                       value_range=(0, 1))
    assert result["gradient_norms"] == pytest.approx(expected.gradients.flatten(1).norm(dim=1).tolist())
    assert -1 <= result["alignment"] <= 1
    assert not (run / "units" / "classifier.3-11.png").exists()


def test_whitebox_layers_of_its_trace(capsys, runs):
    run = runs / "whitebox-mnist35"
    model, _ = load_model(run)
    # trace() names its stages by module path, except the last ("logits" is module "logical")
    stages = {"twostep": "twostep", "conv": "conv", "affine": "affine", "logits": "logical"}
    for key, name in stages.items():
        code, out, err = _run(capsys, run, "--unit", f"{name}:0", "--n", "2", "--json")
        assert code == 0, err
        result = json.loads(out.strip().splitlines()[-1])
        assert result["path"] == name and len(result["gradient_norms"]) == 2
        assert (run / "units" / f"{name}-0.png").is_file()
        # the unit read by the hook is the trace's value at the same place
        api = unit_gradients_on_noise(model, f"{name}:0", 2, input_shape=(1, 28, 28), value_range=(0, 1))
        index = (slice(None), 0, *(api.unit.position or ()))
        torch.testing.assert_close(api.values, model.trace(api.inputs)[key][index])
        assert result["values"] == pytest.approx(api.values.tolist())


def test_list(capsys, runs):
    code, out, err = _run(capsys, runs / "lenet-mnist35", "--list")
    assert code == 0, err
    assert any(line.split()[:2] == ["features.3", "16"] for line in out.splitlines())
    code, out, err = _run(capsys, runs / "whitebox-mnist35", "--list", "--json")
    modules = json.loads(out.strip().splitlines()[-1])["modules"]
    assert {m["path"]: m["channels"] for m in modules} == {"twostep": 1, "conv": 1, "affine": 8,
                                                          "logical": 2, "": 2}


@pytest.mark.parametrize("args, message, reaches_model", [
    (["--unit", "nope:1"], "has no module 'nope'; valid paths", True),
    (["--unit", "features.3:16"], "channel 16 is out of range; 'features.3' has 16 channels (valid 0..15)",
     True),
    (["--unit", "features.3:1@10,0"], "position (10, 0) is out of range", True),
    (["--unit", "features.3:1", "--n", "0"], "argument --n: must be >= 1", False),
    (["--unit", "features.3:1", "--out", "x.txt"], "the file name must end in one of .png", False),
    (["--unit", "features.3"], "is not 'module.path:channel'", False),
    (["--list", "--out", "x.png"], "--out applies to --unit, not --list", False),
    ([], "one of the arguments --unit --list is required", False),
])
def test_user_errors_exit_2_with_one_line_and_write_nothing(capsys, tmp_path, monkeypatch, args,
                                                             message, reaches_model):
    run = tmp_path / "run"
    save_model(create_model("lenet-mnist35"), run, "lenet-mnist35", extra=DATA)
    before = _files(tmp_path)
    if not reaches_model:  # checked before the model is even loaded
        monkeypatch.setattr(pellucid.models, "load_model", lambda *a, **k: pytest.fail("loaded"))
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(capsys, run, *args)
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert _files(tmp_path) == before  # no grid, no units/ folder, no lock file


def test_missing_run_directory(capsys, tmp_path):
    code, out, err = _run(capsys, tmp_path / "absent", "--unit", "features.0:0")
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "absent").exists()
