import json
from pathlib import Path

import pytest

from pellucid.cli import main



def test_evaluate_json_last_line(authors_dir, capsys):
    assert main(["evaluate", str(authors_dir), "--attack", "pgd", "--steps", "5", "--eps", "0.3",
                 "--limit", "40", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("clean_accuracy", "robust_accuracy", "precision_at_recall_0.8", "n", "seconds"):
        assert key in out
    assert out["n"] == 40 and 0 <= out["robust_accuracy"] <= out["clean_accuracy"] <= 1


def test_evaluate_records_checks_and_writes_the_report(authors_dir, capsys):
    assert main(["evaluate", str(authors_dir), "--attack", "apgd-dlr", "--steps", "5",
                 "--limit", "16", "--check-limit", "16", "--report", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out["checks"]) == {"gradients", "deterministic", "unbounded", "monotone", "black_box"}
    assert out["checks"]["unbounded"]["passed"] and out["checks"]["gradients"]["passed"]
    assert out["checks"]["black_box"]["passed"] is None  # no black-box attack in this run
    record_path = Path(out["record"])
    assert record_path.parent == authors_dir / "evaluations" and record_path.name.startswith("apgd-dlr-linf-eps0.3-n16-")
    record = json.loads(record_path.read_text())
    assert record["summary"]["robust_accuracy"] == out["robust_accuracy"]
    assert len(record["accuracy_vs_eps"]["points"]) == 9
    html = (authors_dir / "report.html").read_text()
    assert "Gradient-masking checks" in html and record_path.stem in html


def test_boundary_attack_reports_minimal_perturbations(authors_dir, capsys):
    assert main(["evaluate", str(authors_dir), "--attack", "boundary", "--steps", "20",
                 "--limit", "3", "--no-checks", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    mp = out["minimal_perturbation"]
    assert mp["flipped"] >= 1 and mp["median_l2"] > 0 and mp["median_linf"] > 0
    assert (authors_dir / "boundary_examples.png").stat().st_size > 1000


def test_fgsm_from_the_cli(authors_dir, capsys):
    assert main(["evaluate", str(authors_dir), "--attack", "fgsm", "--limit", "20"]) == 0
    assert "robust_accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [
    (["evaluate", "/definitely/not/here"], "does not exist"),
    (["evaluate", "{d}", "--limit", "0"], "--limit"),
    (["evaluate", "{d}", "--eps", "-1"], "eps"),
    (["evaluate", "{d}", "--attack", "square", "--steps", "5"], "--steps does not apply"),
    (["evaluate", "{d}", "--attack", "pgd", "--queries", "5"], "--queries"),
])
def test_user_errors_exit_nonzero_with_one_line(authors_dir, capsys, argv, match):
    argv = [a.format(d=authors_dir) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err and "Traceback" not in err


@pytest.mark.parametrize("argv, hint", [
    (["train", "metric-mlp", "--out", "o", "--epsilon", "nan"], "pellucid train metric-mlp"),
    (["evaluate", "d", "--bogus", "3"], "pellucid evaluate"),
    (["demo", "--zzz"], "pellucid demo"),
])
def test_an_unrecognised_argument_points_to_the_help_of_the_command_it_was_given_to(capsys, argv, hint):
    """argparse reports extra arguments from the top-level parser; the hint names the innermost one."""
    assert main(argv) == 2
    extras = " ".join(argv[-2:] if argv[0] != "demo" else argv[-1:])
    assert capsys.readouterr().err == f"{hint}: error: unrecognized arguments: {extras} (see {hint} --help)\n"


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


def test_json_output_is_strict_json_without_nan(capsys):
    import numpy as np

    from pellucid.cli._common import print_json

    print_json({"p": float("nan"), "q": [1.5, float("inf")], "r": np.float32("nan"), "s": 2})
    out = capsys.readouterr().out.strip()
    assert json.loads(out, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}")) == {
        "p": None, "q": [1.5, None], "r": None, "s": 2}


def test_console_entry_exits_normally_with_the_code_of_main(monkeypatch):
    """No shortcut past interpreter finalisation: the saving measured too small (see entry())."""
    import atexit
    import importlib
    import os

    cli_main = importlib.import_module("pellucid.cli.main")  # the module, not the re-exported main()
    monkeypatch.setattr(os, "_exit", lambda code: pytest.fail(f"os._exit({code}) skips finalisation"))
    monkeypatch.setattr(atexit, "_run_exitfuncs", lambda: pytest.fail("exit handlers run early"))
    for code in (0, 2, 130):
        monkeypatch.setattr(cli_main, "main", lambda code=code: code)
        with pytest.raises(SystemExit) as exc:
            cli_main.entry()
        assert exc.value.code == code


def test_top_level_help_and_version_do_not_import_torch():
    """Only the named subcommand's parser is built, so `pellucid --help` skips torch (~3 s)."""
    import subprocess
    import sys

    probe = ("import sys\nfrom pellucid.cli.main import main\n"
             "for argv in (['--help'], ['--version'], ['no-such-command']):\n"
             "    try:\n        print('exit', main(argv))\n    except SystemExit as e:\n        print('exit', e.code)\n"
             "print('torch imported:', 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "torch imported: False"
    assert [ln for ln in lines if ln.startswith("exit")] == ["exit 0", "exit 0", "exit 2"]
    for name in ("train", "evaluate", "demo", "explain"):  # every command is listed with its summary
        assert any(ln.strip().startswith(name + " ") for ln in lines), name
    assert "invalid choice: 'no-such-command'" in out.stderr


def test_a_named_subcommand_gets_its_full_parser():
    from pellucid.cli.main import build_parser

    args = build_parser(["train", "whitebox-mnist35", "--out", "x"]).parse_args(
        ["train", "whitebox-mnist35", "--out", "x", "--epochs", "2"])
    assert args.recipe == "whitebox-mnist35" and args.epochs == 2
    with pytest.raises(SystemExit):  # another command's options are not there
        build_parser(["evaluate"]).parse_args(["train", "whitebox-mnist35", "--out", "x"])


def test_help_states_real_defaults_only(capsys):
    from pellucid.cli.main import build_parser

    for argv in (["evaluate"], ["train", "whitebox-mnist35"], ["demo"], ["explain"]):
        with pytest.raises(SystemExit):
            build_parser(argv).parse_args([*argv, "--help"])
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert "(default: None)" not in text and "(default: False)" not in text, argv
        if argv == ["evaluate"]:
            assert "perturbation budget (default: 0.3)" in text  # a real default is still stated
            # attacks whose defaults differ each state their own (Adam-PGD's L2 step, L2-BIM's)
            assert ("PGD/APGD step (default: pgd eps / 3, adam-pgd eps / 3; l2: eps / 40, l2-bim eps / 5"
                    in text and "(default eps / 3) (default" not in text)


def test_evaluate_no_progress_silences_stage_lines_but_not_results(authors_dir, capsys):
    argv = ["evaluate", str(authors_dir), "--attack", "fgsm", "--limit", "8", "--no-checks", "--json"]
    assert main(argv) == 0
    loud = capsys.readouterr()
    assert "fgsm (linf eps 0.3) on 8 test images" in loud.err  # the stage line, by default
    assert main([*argv, "--no-progress"]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == ""
    same = ("clean_accuracy", "robust_accuracy", "n")
    assert {k: json.loads(quiet.out.splitlines()[-1])[k] for k in same} == \
        {k: json.loads(loud.out.splitlines()[-1])[k] for k in same}


def test_evaluate_no_progress_turns_the_attack_bars_off(authors_dir, capsys, monkeypatch):
    import pellucid.report.evaluation as evaluation

    seen = []
    real = evaluation.evaluate_robustness

    def spy(*args, **kwargs):
        seen.append(kwargs["progress"])
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_robustness", spy)
    base = ["evaluate", str(authors_dir), "--attack", "fgsm", "--limit", "4", "--no-checks"]
    assert main(base) == 0 and main([*base, "--no-progress"]) == 0
    assert seen == [True, False]
