import json

import pytest

from pellucid.cli import main
from pellucid.models import save_model


@pytest.fixture(scope="module")
def authors_dir(tmp_path_factory, authors_model):
    d = tmp_path_factory.mktemp("authors")
    save_model(authors_model, d, "whitebox-mnist35",
               extra={"data": {"dataset": "mnist", "classes": [3, 5]}})
    return d


def test_evaluate_json_last_line(authors_dir, capsys):
    assert main(["evaluate", str(authors_dir), "--attack", "pgd", "--steps", "5", "--eps", "0.3",
                 "--limit", "40", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("clean_accuracy", "robust_accuracy", "precision_at_recall_0.8", "n", "seconds"):
        assert key in out
    assert out["n"] == 40 and 0 <= out["robust_accuracy"] <= out["clean_accuracy"] <= 1


def test_fgsm_from_the_cli(authors_dir, capsys):
    assert main(["evaluate", str(authors_dir), "--attack", "fgsm", "--limit", "20"]) == 0
    assert "robust_accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [
    (["evaluate", "/definitely/not/here"], "does not exist"),
    (["evaluate", "{d}", "--limit", "0"], "--limit"),
    (["evaluate", "{d}", "--eps", "-1"], "eps"),
])
def test_user_errors_exit_nonzero_with_one_line(authors_dir, capsys, argv, match):
    argv = [a.format(d=authors_dir) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err and "Traceback" not in err


def test_train_cli_tiny_run_then_resume(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "whitebox-mnist35", "--out", str(out), "--epochs", "1", "--val-size", "11000",
            "--val-pgd-steps", "1", "--no-progress", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["epoch"] == 1 and "val_pgd_accuracy" in summary
    assert main(args) == 2  # refuses to overwrite
    assert "--resume" in capsys.readouterr().err
    assert main(args[:5] + ["2"] + args[6:] + ["--resume"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epoch"] == 2
