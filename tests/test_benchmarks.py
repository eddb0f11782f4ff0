"""benchmarks/ as one suite: the list, the runner's results lines, the results page, the CLI."""

from __future__ import annotations

import ast
import datetime
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `pytest` without `python -m`: the repository root holds `benchmarks`
    sys.path.insert(0, str(REPO))

import benchmarks  # noqa: E402
from benchmarks import _render, _runner  # noqa: E402
from benchmarks.__main__ import listing, main as cli  # noqa: E402

ENVIRONMENT_FIELDS = {"pellucid", "torch", "python", "platform", "cpu", "cpu_count", "threads", "device",
                      "seed", "git_commit", "timestamp", "command", "argv", "wall_seconds"}

FAKE = '''
"""A fake benchmark: returns what it was given."""
from benchmarks import _harness as h

SUMMARY = "fake"
EXPECTED_TIME = "instant"


def parser():
    p = h.parser(__name__, __doc__, threads=1, seed=0)
    p.add_argument("--value", type=float, default=1.5)
    p.add_argument("--rows", type=int, default=0)
    p.add_argument("--nothing", action="store_true")
    return p


def main(argv=None):
    args = h.parse(parser(), argv)
    if args.nothing:
        return None
    if args.rows:
        return [{"row": i, "value": args.value} for i in range(args.rows)]
    return {"value": args.value, "seed": args.seed}
'''


def _python(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=60,
                          **kwargs)


@pytest.fixture
def fake(tmp_path):
    path = tmp_path / "fake_bench.py"
    path.write_text(FAKE)
    spec = importlib.util.spec_from_file_location("fake_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_list_holds_every_module_with_its_metadata():
    files = sorted(p.stem for p in (REPO / "benchmarks").glob("*.py") if not p.stem.startswith("_"))
    assert benchmarks.names() == files and len(files) >= 20
    text = listing()
    for name in files:
        module = benchmarks.load(name)
        assert isinstance(module.SUMMARY, str) and module.SUMMARY.strip() and "\n" not in module.SUMMARY
        assert isinstance(module.EXPECTED_TIME, str) and module.EXPECTED_TIME.strip()
        assert callable(module.main) and callable(module.parser)
        assert f"{name}  " in text and module.SUMMARY in text
    assert not set(files) & set(benchmarks.COMMANDS)


def test_benchmarks_import_each_other_as_a_package():
    """No import of a sibling by file name (``from metric_conv_speed import timed``)."""
    for name in benchmarks.names():
        tree = ast.parse((REPO / "benchmarks" / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] not in benchmarks.names() + ["_harness", "_runner"], name
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] not in benchmarks.names() for a in node.names), name


def test_listing_is_quick_and_imports_no_torch():
    code = ("import sys; from benchmarks.__main__ import main; rc = main([]); "
            "print('torch' in sys.modules, 'pellucid' in sys.modules, rc, file=sys.stderr)")
    done = _python("-c", code)
    assert done.stderr.split() == ["False", "False", "0"], done.stderr
    assert all(name in done.stdout for name in benchmarks.names())
    assert "time:" in done.stdout


@pytest.mark.parametrize("name", benchmarks.names())
def test_help_of_every_benchmark(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        benchmarks.load(name).main(["--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m benchmarks {name}")


def test_a_script_runs_as_a_file_too():
    done = _python("benchmarks/metric_lp_speed.py", "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m benchmarks metric_lp_speed")


def test_unknown_benchmark_is_a_one_line_error_and_exit_2(capsys):
    assert cli(["no_such_benchmark"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert "unknown benchmark 'no_such_benchmark'" in captured.err
    done = _python("-m", "benchmarks", "no_such_benchmark", "--x")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and not done.stdout


def test_runner_records_environment_config_and_result_and_keeps_earlier_lines(fake, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    old = '{"value": 0.25, "env": {"torch": "old"}}'  # an old-style line, and no final newline
    (results / "fake_bench.jsonl").write_text(old)
    out = io.StringIO()
    assert _runner.run("fake_bench", ["--seed", "3", "--value", "2.5"], module=fake, results_dir=results,
                       out=out) == 0
    assert _runner.run("fake_bench", ["--rows", "2"], module=fake, results_dir=results, out=out) == 0
    assert _runner.run("fake_bench", ["--nothing"], module=fake, results_dir=results, out=out) == 0

    lines = (results / "fake_bench.jsonl").read_text().splitlines()
    assert lines[0] == old and len(lines) == 4  # 1 old + 1 + 2 (a list: one line per item) + 0 (None)
    assert out.getvalue().splitlines() == lines[1:]  # printed as appended
    first = json.loads(lines[1])
    assert set(first) == {"benchmark", "environment", "config", "result"}
    assert first["benchmark"] == "fake_bench"
    assert first["result"] == {"value": 2.5, "seed": 3}
    assert first["config"] == {"threads": 1, "seed": 3, "value": 2.5, "rows": 0, "nothing": False}
    env = first["environment"]
    assert set(env) == ENVIRONMENT_FIELDS
    assert env["seed"] == 3 and env["threads"] == 1
    assert env["command"] == "python -m benchmarks fake_bench --seed 3 --value 2.5"
    assert isinstance(env["python"], str) and env["torch"] and env["cpu"] and env["device"]
    assert env["git_commit"] is None or len(env["git_commit"]) == 40
    assert datetime.datetime.fromisoformat(env["timestamp"]).utcoffset() == datetime.timedelta(0)
    assert [json.loads(line)["result"]["row"] for line in lines[2:]] == [0, 1]
    # the page reads both kinds of line
    read = _render.read_lines(results / "fake_bench.jsonl")
    assert [line.recorded_by_runner for line in read] == [False, True, True, True]
    assert read[0].result == {"value": 0.25} and read[0].environment == {"torch": "old"}


def test_help_through_the_runner_records_nothing(fake, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        _runner.run("fake_bench", ["--help"], module=fake, results_dir=tmp_path / "results")
    assert exit_.value.code == 0 and not (tmp_path / "results").exists()
    assert capsys.readouterr().out.startswith("usage: python -m benchmarks fake_bench")


@pytest.mark.parametrize("raised, code, said", [
    (KeyboardInterrupt(), 130, "benchmark fake_bench: interrupted; nothing recorded"),
    ("stopped", 143, "benchmark fake_bench: stopped: epoch 2 of 50 stopped after batch 7 of 1200; the run "
                     "so far is saved in runs/x, and --resume continues it; nothing recorded"),
])
def test_a_stopped_benchmark_says_so_in_one_line_and_records_nothing(fake, tmp_path, capsys, monkeypatch,
                                                                     raised, code, said):
    import signal

    from pellucid.errors import Stopped

    if raised == "stopped":  # what a training run raises when it answered a SIGTERM
        raised = Stopped(signal.SIGTERM, "epoch 2 of 50 stopped after batch 7 of 1200; the run so far "
                                         "is saved in runs/x, and --resume continues it")

    def stops(argv):
        raise raised

    monkeypatch.setattr(fake, "main", stops)
    assert _runner.run("fake_bench", [], module=fake, results_dir=tmp_path / "results") == code
    assert capsys.readouterr().err.splitlines() == [said]
    assert not (tmp_path / "results").exists()


def test_git_commit_is_none_when_git_cannot_answer(monkeypatch, tmp_path):
    def timeout(*args, **kwargs):
        raise subprocess.TimeoutExpired("git", 5)

    monkeypatch.setattr(_runner.subprocess, "run", timeout)
    assert _runner.git_commit() is None
    monkeypatch.undo()
    monkeypatch.setattr(_runner, "REPO", tmp_path)  # not a git checkout
    assert _runner.git_commit() is None


def _record(name: str, result: dict, **env) -> str:
    environment = {"pellucid": "9.9.9", "torch": "1.0", "python": "3.11.0", "platform": "Linux",
                   "cpu": "Test CPU", "cpu_count": 2, "threads": 2, "device": "cpu", "seed": 0,
                   "git_commit": "abcdef1234567890abcdef1234567890abcdef12", "timestamp": "2030-01-02T03:04:05+00:00",
                   "command": f"python -m benchmarks {name} --p 0.5", "argv": [], "wall_seconds": 1.0, **env}
    return json.dumps({"benchmark": name, "environment": environment, "config": {"p": [0.5]}, "result": result})


def test_the_page_is_rendered_from_the_json_lines_only(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    old = {"benchmark": "metric_lp_speed", "rows": [{"p": 0.5, "hidden": 100, "speedup": 1.111}]}
    new = {"batch": 50, "rows": [{"p": 0.5, "hidden": 100, "forward_backward_ms": {"pellucid": 12.345, "cdist": 67.89},
                                  "speedup": 5.4998},
                                 {"p": 20.0, "hidden": 500, "forward_backward_ms": {"pellucid": 31.4, "cdist": 713.1},
                                  "speedup": 22.71}]}
    (results / "metric_lp_speed.jsonl").write_text(json.dumps(old) + "\n" + _record("metric_lp_speed", new) + "\n")
    table = {"model": "tiny", "target": "label", "n": 4,
             "rows": [{"method": "gradient", "metric": "infidelity", "mean": 0.123456, "sem": 0.0211,
                       "higher_is_better": False},
                      {"method": "pullback", "metric": "infidelity", "mean": 0.0987, "sem": None,
                       "higher_is_better": False}]}
    (results / "explain_table.jsonl").write_text(json.dumps(table) + "\n")
    (results / "something_else.jsonl").write_text('{"answer": 42}\n')
    page = _render.render(results)

    section = page[page.index("## metric_lp_speed"):page.index("## something_else")]
    assert "| p | hidden | forward_backward_ms.pellucid | forward_backward_ms.cdist | speedup |" in section
    assert "| 1 | 0.5 | 100 | 12.345 | 67.89 | 5.4998 |" in section
    assert "| 2 | 20 | 500 | 31.4 | 713.1 | 22.71 |" in section
    assert "1.111" not in section  # not a series: the latest line only
    assert "pellucid 9.9.9" in section and "commit abcdef1234" in section and "Test CPU (2 cores)" in section
    assert "Reproduce: `python -m benchmarks metric_lp_speed --p 0.5`" in section
    assert "| gradient | 0.1235 ± 0.021 |" in page and "| pullback | 0.0987 |" in page  # method x metric
    assert "infidelity ↓" in page and "recorded before the runner" in page
    assert "## something_else" in page and "| answer | 42 |" in page
    assert "No results recorded yet:" in page and "`whitebox_speed`" in page

    out = tmp_path / "results.md"
    assert cli(["--results-dir", str(results), "render", "--out", str(out)]) == 0
    assert out.read_text() == page


def test_old_single_object_json_files_are_read(tmp_path):
    (tmp_path / "bench_pullback_cpu.json").write_text(json.dumps(
        {"benchmark": "pullback_vs_gradient", "results": {"batch8": {"ratios": {"time": 1.13}}},
         "env": {"threads": 2}}, indent=1))
    assert _render.results_files(tmp_path) == {"bench_pullback": [tmp_path / "bench_pullback_cpu.json"]}
    page = _render.render(tmp_path)
    assert "## bench_pullback" in page and "| batch8 | 1.13 |" in page and "threads 2" in page


# --------------------------------------------------------------------------- generated blocks


def test_committed_readme_blocks_and_results_page_match_the_json_lines():
    """README.md's and docs/*.md's generated blocks and docs/results.md are what the committed
    results files render to: a quoted number cannot drift from its JSON."""
    from benchmarks import _blocks

    assert _blocks.stale(benchmarks.RESULTS_DIR) == {}
    assert (REPO / "docs" / "results.md").read_text() == _render.render(benchmarks.RESULTS_DIR)
    assert "<!-- results:readme -->" in (REPO / "README.md").read_text()


def _evaluation_record(run: Path, attack: str, robust: float, n: int, **summary) -> None:
    (run / "evaluations").mkdir(parents=True, exist_ok=True)
    body = {"attack": attack, "eps": 0.3, "norm": "linf", "n": n, "seed": 0, "clean_accuracy": 0.99,
            "robust_accuracy": robust, "options": {"steps": 40, "random_start": True, "step_size": None},
            **summary}
    (run / "evaluations" / f"{attack}-{n}.json").write_text(json.dumps({"summary": body, "reliability": {}}))


def test_collected_evaluation_commands_parse_and_leave_defaults_out(tmp_path):
    from benchmarks import evaluations
    from pellucid.cli.main import build_parser

    run = tmp_path / "wb"
    _evaluation_record(run, "pgd", 0.5, 100, options={"steps": 20, "random_start": True, "step_size": None})
    _evaluation_record(run, "autoattack", 0.4, 100, budget="adaptive", processes=2, chunk_size=64,
                       options={"budget": {"restarts": 3, "transfer_from": "runs/lenet", "losses": ["margin"]},
                                "step_size": None})
    (row,) = evaluations.main([str(run)])
    commands = {r["attack"]: r["command"] for r in row["evaluations"]}
    assert commands["pgd"] == f"pellucid evaluate {run} --attack pgd --steps 20 --eps 0.3 --limit 100 --json"
    assert commands["autoattack"].startswith("torchrun --nproc-per-node 2 -m pellucid evaluate")
    assert "--transfer-from runs/lenet" in commands["autoattack"] and "--losses margin" in commands["autoattack"]
    for command in commands.values():
        words = command.split()
        words = words[words.index("evaluate"):]
        build_parser(words).parse_args(words)  # a usage error would exit
    with pytest.raises(SystemExit, match="no evaluation records"):
        evaluations.main([str(tmp_path / "empty")])


def _budget_record(run: Path, budget: str, robust: list[bool], **summary) -> None:
    (run / "evaluations").mkdir(parents=True, exist_ok=True)
    body = {"attack": "autoattack", "budget": budget, "eps": 0.3, "norm": "linf", "n": len(robust),
            "dataset": "mnist", "weights_sha256": "ab" * 32, "seed": 0, "clean_accuracy": 1.0,
            "robust_accuracy": sum(robust) / len(robust),
            "stages": [{"attack": "a", "attacked": len(robust), "broken": robust.count(False), "seconds": 1.5}],
            **summary}
    per_image = {"robust": robust}
    (run / "evaluations" / f"autoattack-{budget}-{len(robust)}.json").write_text(
        json.dumps({"summary": body, "per_image": per_image}))


def test_budget_agreement_lists_the_images_only_one_budget_broke(tmp_path):
    from benchmarks import budget_agreement

    run = tmp_path / "wb"
    _budget_record(run, "native-standard", [True, False, True, False, True])
    _budget_record(run, "standard", [True, True, False, False, True])
    out = budget_agreement.main([str(run), "native-standard", "standard"])
    assert out["broken_by_first_only"] == [1] and out["broken_by_second_only"] == [2]
    assert out["difference_points"] == 0.0 and out["n"] == 5
    assert out["first"]["robust_images"] == 3 and out["first"]["attack_seconds"] == 1.5
    swapped = budget_agreement.main([str(run), "standard", "native-standard"])
    assert swapped["broken_by_first_only"] == [2] and swapped["broken_by_second_only"] == [1]
    with pytest.raises(SystemExit, match="no autoattack record of budget 'adaptive'"):
        budget_agreement.main([str(run), "adaptive", "standard"])
    other = tmp_path / "other"
    _budget_record(other, "native-standard", [True] * 5)
    _budget_record(other, "standard", [True] * 5, weights_sha256="cd" * 32)
    with pytest.raises(SystemExit, match="differ in weights_sha256"):
        budget_agreement.main([str(other), "native-standard", "standard"])


def test_autoattack_cells_use_records_of_the_same_weights_only(tmp_path):
    from benchmarks import _blocks, evaluations

    results = tmp_path / "results"
    results.mkdir()
    run = tmp_path / "wb"
    _evaluation_record(run, "pgd", 0.5, 100, weights_sha256="aa")
    (run / "evaluations" / "autoattack-old.json").write_text(json.dumps({"summary": {
        "attack": "autoattack", "budget": "native-standard", "eps": 0.3, "norm": "linf", "n": 100, "seed": 0,
        "clean_accuracy": 0.99, "robust_accuracy": 0.25, "options": {"budget": "native-standard"},
        "weights_sha256": "bb"}}))  # other weights: a retrained run's old record
    (run / "evaluations" / "autoattack-subset.json").write_text(json.dumps({"summary": {
        "attack": "autoattack", "budget": "standard-native", "eps": 0.3, "norm": "linf", "n": 40, "seed": 0,
        "clean_accuracy": 0.99, "robust_accuracy": 0.375, "options": {"budget": "standard-native"},
        "weights_sha256": "aa"}}))
    (results / "evaluations.jsonl").write_text(_record("evaluations", evaluations.main([str(run)])) + "\n")
    assert _blocks._autoattack_cell(results, "wb", 100, "aa", subset=40) == \
        "37.50 % (first 40 images, `standard-native`)"
    assert _blocks._autoattack_cell(results, "wb", 100, "bb", subset=40) == "25.00 % (`native-standard`)"
    assert _blocks._autoattack_cell(results, "wb", 100, "cc", subset=40) == "not run"


def test_blocks_take_their_numbers_from_the_results_files(tmp_path, monkeypatch):
    from benchmarks import _blocks

    results = tmp_path / "results"
    results.mkdir()
    runs = []
    for run, n in (("wb", 10), ("other", 10)):
        _evaluation_record(tmp_path / run, "pgd", 0.625 if run == "wb" else 0.125, n)
        runs.append(str(tmp_path / run))
    from benchmarks import evaluations

    lines = [_record("evaluations", r) for r in evaluations.main(runs)]
    (results / "evaluations.jsonl").write_text("\n".join(lines) + "\n")

    def block(results_dir: Path) -> str:
        return _blocks.pct(_blocks.evaluation(results_dir, "wb", "pgd", n=10)["robust_accuracy"]) + "\n"

    monkeypatch.setitem(_blocks.BLOCKS, "tiny", block)
    doc = tmp_path / "doc.md"
    doc.write_text("before\n<!-- results:tiny -->\nhand-typed 99 %\n<!-- /results:tiny -->\nafter\n")
    assert _blocks.stale(results, [doc]) == {doc: "before\n<!-- results:tiny -->\n62.50 %\n<!-- /results:tiny -->\nafter\n"}
    doc.write_text(_blocks.stale(results, [doc])[doc])
    assert _blocks.stale(results, [doc]) == {}  # current now
    with pytest.raises(_blocks.MissingResult, match="no evaluation record of wb for autoattack"):
        _blocks.evaluation(results, "wb", "autoattack", "native")
    doc.write_text("<!-- results:nope -->\n<!-- /results:nope -->\n")
    with pytest.raises(_blocks.MissingResult, match="no generator for block 'nope'"):
        _blocks.stale(results, [doc])


def test_render_check_names_an_out_of_date_page_and_writes_nothing(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    (results / "something.jsonl").write_text('{"answer": 42}\n')
    out = tmp_path / "results.md"
    out.write_text("old\n")
    assert cli(["--results-dir", str(results), "render", "--out", str(out), "--check"]) == 1
    assert out.read_text() == "old\n" and "out of date" in capsys.readouterr().err
    readme = (REPO / "README.md").read_text()
    assert cli(["--results-dir", str(results), "render", "--out", str(out)]) == 0
    assert (REPO / "README.md").read_text() == readme  # other results never touch the README


def test_explain_table_bolds_the_best_by_direction_and_marks_missing_values():
    from benchmarks import _blocks

    def row(method, metric, mean, higher, note=None):
        return {"method": method, "metric": metric, "mean": mean, "higher_is_better": higher, "note": note}

    table = _blocks.explain_table({"rows": [
        row("a", "infidelity", 0.5, False), row("a", "insertion", 2.0, True),
        row("b", "infidelity", 0.25, False), row("b", "insertion", None, True, "no conv layer")]})
    lines = table.splitlines()
    assert lines[0] == "| method | INFD ↓ | INS ↑ |"
    assert lines[2] == "| a | 0.5 | **2** |" and lines[3] == "| b | **0.25** | n/a |"
    assert lines[-1] == "Note (b): no conv layer."


def test_a_run_recorded_in_the_repository_results_renders_the_docs_and_others_do_not(fake, tmp_path,
                                                                                       monkeypatch):
    """After a line lands in benchmarks/results/, docs/results.md and the generated blocks are
    rendered again (the docs never lag behind the lines); a run recording elsewhere, or nothing,
    renders nothing."""
    import benchmarks._render as render_module

    renders = []
    repo_results = tmp_path / "repo-results"
    monkeypatch.setattr(_runner, "RESULTS_DIR", repo_results)
    monkeypatch.setattr(render_module, "main", lambda argv: renders.append(
        sorted(p.name for p in repo_results.glob("*.jsonl"))) or 0)
    out = io.StringIO()
    assert _runner.run("fake_bench", [], module=fake, results_dir=tmp_path / "elsewhere", out=out) == 0
    assert _runner.run("fake_bench", [], module=fake, results_dir=None, out=out) == 0
    assert renders == []
    assert _runner.run("fake_bench", ["--rows", "2"], module=fake, results_dir=repo_results, out=out) == 0
    assert renders == [["fake_bench.jsonl"]]  # once, after both lines were appended
    assert len((repo_results / "fake_bench.jsonl").read_text().splitlines()) == 2
    assert _runner.run("fake_bench", ["--nothing"], module=fake, results_dir=repo_results, out=out) == 0
    assert len(renders) == 1  # no measurement, no line, no render


def test_a_failed_render_keeps_the_line_and_says_what_to_run(fake, tmp_path, monkeypatch, capsys):
    import benchmarks._render as render_module

    monkeypatch.setattr(_runner, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(render_module, "main", lambda argv: 2)
    assert _runner.run("fake_bench", [], module=fake, results_dir=tmp_path, out=io.StringIO()) == 0
    assert len((tmp_path / "fake_bench.jsonl").read_text().splitlines()) == 1
    assert "python -m benchmarks render" in capsys.readouterr().err


def test_benchmark_device_option_is_resolved_and_recorded(tmp_path, capsys):
    """--device (metric_table1): a device the host lacks or an unknown name is a usage error
    before any work; the CPU is recorded as such in the result and the environment."""
    import torch

    from benchmarks import metric_table1

    for bad, needle in (("cuda:7", "CUDA"), ("gpu", "unknown device")):
        if bad == "cuda:7" and torch.cuda.device_count() > 7:  # a host with eight GPUs has it
            continue
        with pytest.raises(SystemExit) as exit_:
            _runner.run("metric_table1", ["--cost-only", "1", "--cells", "l2:5", "--device", bad],
                        module=metric_table1, results_dir=tmp_path)
        assert exit_.value.code == 2 and needle in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    out = io.StringIO()
    assert _runner.run("metric_table1", ["--cost-only", "1", "--cells", "l2:5", "--device", "cpu"],
                       module=metric_table1, results_dir=tmp_path, out=out) == 0
    line = json.loads(out.getvalue())
    assert line["result"]["device"] == "cpu" and line["environment"]["device"] == "cpu"
    assert line["config"]["device"] == "cpu" and line["result"]["cells"]["l2:5"]["ms_per_step"] > 0


@pytest.mark.parametrize("argv, needle", [
    (["--cells", "foo:5"], "unknown metric 'foo'"), (["--cells", "l2:7"], "not a Table 1 column"),
    (["--cells", "l2"], "positive whole number"), (["--cells", "l2:0"], "positive whole number"),
    (["--cells", "l2:-5"], "positive whole number"), (["--seeds", "0"], "--seeds must be at least 1"),
    (["--epochs", "0"], "--epochs must be at least 1"), (["--cost-only", "-1"], "cannot be negative")])
def test_metric_table1_bad_cells_and_counts_fail_before_any_work(argv, needle, tmp_path, capsys):
    from benchmarks import metric_table1

    with pytest.raises(SystemExit) as exit_:
        _runner.run("metric_table1", argv, module=metric_table1, results_dir=tmp_path)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and needle in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_the_gpu_script_checks_itself_on_the_cpu(tmp_path):
    """``DEVICE=cpu`` runs ``device_check.sh tenclass`` with small sizes: every command and flag
    it hands a GPU machine exists, and each measurement is a JSON line."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), "NO_WHEELS": "1"}
    done = subprocess.run(["bash", str(root / "benchmarks" / "device_check.sh"), "tenclass"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:] + (tmp_path / "out" / "commands.log").read_text()[-2000:]
    lines = [json.loads(line) for line in (tmp_path / "out" / "device.jsonl").read_text().splitlines()]
    assert [line["what"].split(",")[0] for line in lines] == [
        "environment", "pellucid train whitebox-mnist10 --epochs 1 --val-size 59500 --val-pgd-steps 0",
        "pellucid evaluate", "pellucid evaluate"]
    assert all(isinstance(line.get("seconds", 0), int) for line in lines)
    records = sorted(p.name.split("-")[0] for p in (tmp_path / "out" / "wb10").glob("*.json"))
    assert records == ["autoattack", "pgd"]
    bad = subprocess.run(["bash", str(root / "benchmarks" / "device_check.sh"), "bogus"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "usage:" in bad.stderr
