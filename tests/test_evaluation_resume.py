"""An interrupted evaluation keeps its finished chunks: the same command, run again, attacks only
the rest and records what an uninterrupted run records, image by image."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from interruptions import interrupted_at_call, run_kill_plan

from pellucid.report.evaluation import UNFINISHED_DIR, evaluate_run
from pellucid.robust import evaluate as evaluate_module
from pellucid.robust import chunk_store as chunk_store_module

# 24 images in 3 chunks of 8; PGD's random start makes every chunk's result depend on its stream
SETTINGS = dict(attack="pgd", eps=0.4, seed=4, options={"steps": 3}, limit=24, chunk_size=8, checks=False)
HOW_IT_RAN = {"model_dir", "seconds", "stages", "reused_chunks"}


def copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in ("model.safetensors", "config.json"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def record(run_dir: Path) -> dict:
    [path] = sorted((run_dir / "evaluations").glob("*.json"))
    return json.loads(path.read_text())


def assert_same_record(a: dict, b: dict) -> None:
    assert a["per_image"] == b["per_image"]
    assert a["reliability"] == b["reliability"]
    differs = {k for k in a["summary"].keys() | b["summary"].keys() if a["summary"].get(k) != b["summary"].get(k)}
    assert differs <= HOW_IT_RAN, differs
    for ra, rb in zip(a["summary"]["stages"], b["summary"]["stages"], strict=True):
        assert {k: v for k, v in ra.items() if k != "seconds"} == {k: v for k, v in rb.items() if k != "seconds"}


def unfinished(run_dir: Path) -> list[Path]:
    root = run_dir / "evaluations" / UNFINISHED_DIR
    return sorted(root.rglob("*.safetensors")) if root.exists() else []


@pytest.fixture
def reference(authors_dir, tmp_path):
    run = copy_model(authors_dir, tmp_path / "reference")
    evaluate_run(run, **SETTINGS)
    rec = record(run)
    assert 0 < sum(rec["per_image"]["robust"]) < 24  # the attack broke some images, not all
    assert not (run / "evaluations" / UNFINISHED_DIR).exists()  # removed once recorded
    return rec


def interrupt_at_chunk(monkeypatch, run: Path, chunk: int, **changes) -> None:
    """Evaluate ``run`` (``SETTINGS`` with ``changes``) and raise KeyboardInterrupt when chunk
    ``chunk`` (1-based) starts."""
    with interrupted_at_call(monkeypatch, evaluate_module, "_attack_chunk", chunk):
        evaluate_run(run, **{**SETTINGS, **changes})


def count_attacks(monkeypatch) -> list:
    real, calls = evaluate_module._attack_chunk, []

    def counted(index, *args, **kwargs):
        calls.append(index)
        return real(index, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "_attack_chunk", counted)
    return calls


def test_an_interrupted_evaluation_attacks_only_the_chunks_it_had_not_finished(
        authors_dir, tmp_path, monkeypatch, reference):
    run = copy_model(authors_dir, tmp_path / "run")
    interrupt_at_chunk(monkeypatch, run, 3)
    assert len(unfinished(run)) == 2 and not list((run / "evaluations").glob("*.json"))
    calls, lines = count_attacks(monkeypatch), []
    again = evaluate_run(run, **SETTINGS, log=lines.append)
    assert calls == [2]  # the third chunk alone
    assert any("2 of 3 chunks were finished by an earlier, interrupted run" in line for line in lines)
    assert again.summary["reused_chunks"] == 2
    assert_same_record(record(run), reference)
    assert not (run / "evaluations" / UNFINISHED_DIR).exists()
    # another evaluation (another eps) does not see them: its chunks are its own
    interrupt_at_chunk(monkeypatch, run, 2)
    other = evaluate_run(run, **{**SETTINGS, "eps": 0.3})
    assert "reused_chunks" not in other.summary
    assert len(unfinished(run)) == 1  # the eps-0.4 run's chunk waits for its own command


def test_unreadable_or_foreign_chunk_files_are_attacked_again(authors_dir, tmp_path, monkeypatch, capsys, reference):
    run = copy_model(authors_dir, tmp_path / "run")
    interrupt_at_chunk(monkeypatch, run, 3)
    first, second = unfinished(run)
    first.write_bytes(first.read_bytes()[:100])  # truncated
    # the same image range of another evaluation (seed 5), under this one's name
    other = copy_model(authors_dir, tmp_path / "seed5")
    interrupt_at_chunk(monkeypatch, other, 3, seed=5)
    [foreign] = [p for p in unfinished(other) if p.name == second.name]
    second.write_bytes(foreign.read_bytes())
    capsys.readouterr()
    calls = count_attacks(monkeypatch)
    evaluate_run(run, **SETTINGS)
    err = capsys.readouterr().err
    assert sorted(calls) == [0, 1, 2]
    assert err.count("pellucid: warning: ignoring the saved chunk") == 2, err
    assert "belongs to another evaluation" in err
    assert_same_record(record(run), reference)


def test_a_disk_that_refuses_the_chunks_only_costs_the_resumability(authors_dir, tmp_path, monkeypatch, capsys,
                                                                   reference):
    run = copy_model(authors_dir, tmp_path / "run")

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(chunk_store_module, "save_tensors_atomic", full)
    evaluate_run(run, **SETTINGS)
    err = capsys.readouterr().err
    assert err.count("cannot keep finished chunks") == 1 and "No space left" in err
    assert_same_record(record(run), reference)


def test_a_log_that_json_cannot_keep_exactly_is_not_kept(tmp_path):
    import torch

    from pellucid.robust.chunk_store import ChunkStore
    from pellucid.robust.evaluate import ChunkResult

    store = ChunkStore(tmp_path, {"attack": "x"})
    chunk = ChunkResult(0, torch.zeros(2, 1, 2, 2), torch.zeros(2, 3), torch.zeros(2, 3),
                        torch.ones(2, dtype=torch.bool), [{"stage": "a", "broken": 1}], {"pair": (1, 2)})
    assert store.save(0, 2, chunk) is False  # the tuple would read back as a list
    assert not store.has(0, 2)
    kept = ChunkResult(0, *(getattr(chunk, n) for n in ("adversarial", "clean_logits", "adversarial_logits",
                                                         "inside")), chunk.stages, {"pair": [1, 2], "x": 0.1})
    store = ChunkStore(tmp_path, {"attack": "x"})
    assert store.save(0, 2, kept)
    back = store.load(0, 0, 2, torch.zeros(1, 1, 2, 2))
    assert back.stages == kept.stages and back.info == kept.info
    assert torch.equal(back.inside, kept.inside) and back.inside.dtype == torch.bool
    assert store.load(0, 0, 3, torch.zeros(1, 1, 2, 2)) is None  # no such range
    store.discard()
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_killed_by_sigkill_after_a_chunk_the_same_command_finishes_it(authors_dir, tmp_path):
    argv = ["evaluate", "{dir}", "--attack", "pgd", "--steps", "3", "--eps", "0.4", "--seed", "4",
            "--limit", "24", "--chunk-size", "8", "--no-checks"]
    scenarios = [{"kind": "evaluate", "dir": str(tmp_path / "ref"), "argv": argv, "copy_from": str(authors_dir)}]
    # write n is the n-th chunk kept; write 4 would be the record
    scenarios += [{"kind": "evaluate", "dir": str(tmp_path / f"kill{n}"), "argv": argv, "copy_from": str(authors_dir),
                   "kill": {"write": n, "phase": phase}} for n, phase in ((1, "before"), (2, "after"), (3, "after"))]
    outcomes = run_kill_plan(tmp_path, scenarios)
    ref = record(tmp_path / "ref")
    for o, reused in zip(outcomes[1:], (0, 2, 3)):
        run = Path(o["dir"])
        assert o["killed"] and o["integrity"] == [], o
        assert len(o["finish"]) == 1 and o["finish"][0]["code"] == 0, o
        again = record(run)
        assert_same_record(again, ref)
        assert again["summary"].get("reused_chunks", 0) == reused
        assert not (run / "evaluations" / UNFINISHED_DIR).exists()


def test_killed_by_sigterm_in_a_chunk_it_unwinds_and_the_same_command_finishes_it(authors_dir, tmp_path, capsys):
    """``kill`` (SIGTERM) unwinds like Ctrl-C: exit 143 with one line that says what is kept, the
    run directory's lock released (the next command has nothing to take over)."""
    from interruptions import signalled_command
    from pellucid.cli.main import main

    argv = ["evaluate", "{dir}", "--attack", "pgd", "--steps", "3", "--eps", "0.4", "--seed", "4",
            "--limit", "24", "--chunk-size", "8", "--no-checks"]
    ref, run = copy_model(authors_dir, tmp_path / "ref"), copy_model(authors_dir, tmp_path / "run")
    assert main([a.format(dir=ref) for a in argv]) == 0
    done = signalled_command(tmp_path, "pellucid.robust.evaluate", "_attack_chunk", 2,
                             [a.format(dir=run) for a in argv], [signal.SIGTERM])
    assert done.returncode == 143, done.stderr
    [kept] = unfinished(run)
    assert done.stderr.splitlines()[-1] == (
        f"pellucid evaluate: stopped: 1 of 3 chunks of up to 8 images are finished and kept in "
        f"{kept.parent}; the same command attacks only the rest")
    assert "Traceback" not in done.stderr
    capsys.readouterr()
    assert main([a.format(dir=run) for a in argv]) == 0
    assert "taking over the lock" not in capsys.readouterr().err
    again = record(run)
    assert_same_record(again, record(ref))
    assert again["summary"]["reused_chunks"] == 1


def test_ctrl_c_before_any_chunk_is_finished_just_says_interrupted(authors_dir, tmp_path, monkeypatch, capsys):
    from pellucid.cli.main import main

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    run = copy_model(authors_dir, tmp_path / "run")
    monkeypatch.setattr(evaluate_module, "_attack_chunk", ctrl_c)  # in the first chunk
    assert main(["evaluate", str(run), "--attack", "pgd", "--steps", "3", "--limit", "24",
                 "--chunk-size", "8", "--no-checks"]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == "pellucid evaluate: interrupted"
    assert unfinished(run) == []


def test_each_attacked_chunk_says_its_robust_accuracy_the_total_so_far_and_the_time_left(
        authors_dir, tmp_path, monkeypatch, reference):
    """Hours-long evaluations are seen progressing without a terminal: one line per chunk attacked
    (none for a reused one), its figures recomputed here from the record's per-image results."""
    run = copy_model(authors_dir, tmp_path / "run")
    interrupt_at_chunk(monkeypatch, run, 2)  # chunk 1 is kept
    lines: list[str] = []
    evaluate_run(run, **SETTINGS, log=lines.append)
    robust = record(run)["per_image"]["robust"]
    done = [line for line in lines if " done: " in line]
    assert [line.split(" done:")[0] for line in done] == ["chunk 2/3", "chunk 3/3"]
    for line, k in zip(done, (2, 3)):
        own = sum(robust[8 * (k - 1):8 * k])
        so_far = sum(robust[:8 * k])
        assert f"robust {100 * own / 8:.2f} % of its 8 images, {100 * so_far / (8 * k):.2f} % of the {8 * k} so far" in line
    assert done[0].endswith("left at this pace") and "left" not in done[1]
