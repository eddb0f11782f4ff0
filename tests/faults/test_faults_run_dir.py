"""Issue items 1-6, 8, 9, 14-16 and 18: run directories lose nothing, bad options fail at once.

Every CLI user error must exit 2 with one line on stderr naming the option or file, no traceback,
and leave the file system as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pellucid._io import save_json_atomic
from pellucid.cli import main
from pellucid.models import create_model, save_model
from pellucid.report.records import load_records
from pellucid.train import TrainConfig
from pellucid.train.checkpointing import STATE_FILE, save_train_state

LOCK_FILE = ".pellucid.lock"
# a 1,552-image training split: one epoch takes well under a second
TINY = ["--val-size", "10000", "--val-pgd-steps", "0", "--no-progress"]


def snapshot(root: Path) -> dict[str, str]:
    """Every file below ``root`` (lock file aside) -> SHA-256 of its bytes."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def train(out: Path, *extra: str) -> int:
    return main(["train", "whitebox-mnist35", "--out", str(out), "--epochs", "1", *TINY, *extra])



@pytest.fixture
def finished_model(tmp_path):
    """A model directory without training state (copied, or saved by the API)."""
    d = tmp_path / "finished"
    torch.manual_seed(1)
    save_model(create_model("whitebox-mnist35"), d, "whitebox-mnist35",
               extra={"data": {"dataset": "mnist", "classes": [3, 5]}})
    return d


# ----------------------------------------------------------------------------- item 1


def test_item01_train_never_overwrites_a_model_that_cannot_be_resumed(finished_model, capsys):
    before = snapshot(finished_model)
    assert train(finished_model) == 2
    one_line_error(capsys, str(finished_model), "new --out")
    assert snapshot(finished_model) == before
    assert train(finished_model, "--resume") == 2  # nothing to resume either
    one_line_error(capsys, "no training state")
    assert snapshot(finished_model) == before


# ----------------------------------------------------------------------------- item 2


def test_item02_a_weaker_evaluation_never_replaces_a_stronger_one(authors_dir, capsys):
    base = ["evaluate", str(authors_dir), "--attack", "pgd", "--no-checks", "--json"]
    assert main(base + ["--steps", "5", "--limit", "60"]) == 0
    strong = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    strong_bytes = Path(strong["record"]).read_bytes()
    for weaker in (["--steps", "5", "--limit", "20"], ["--steps", "2", "--limit", "60"],
                   ["--steps", "5", "--limit", "60", "--step-size", "0.01"],
                   ["--steps", "5", "--limit", "60", "--seed", "1"]):
        assert main(base + weaker) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert out["record"] != strong["record"], weaker
    assert Path(strong["record"]).read_bytes() == strong_bytes
    records = [r for r in load_records(authors_dir) if r["summary"]["attack"] == "pgd"]
    assert len({r["name"] for r in records}) >= 5
    assert {r["summary"]["n"] for r in records} >= {20, 60}


def test_item02_an_evaluation_without_checks_never_replaces_one_with_checks(authors_dir, capsys):
    base = ["evaluate", str(authors_dir), "--attack", "pgd", "--steps", "3", "--limit", "16", "--json"]
    assert main(base + ["--check-limit", "16"]) == 0
    checked = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(base + ["--no-checks"]) == 0
    unchecked = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert checked["record"] != unchecked["record"]
    assert "checks" in json.loads(Path(checked["record"]).read_text())["summary"]


def test_item02_the_report_shows_which_evaluation_is_which(authors_dir, capsys):
    assert main(["evaluate", str(authors_dir), "--attack", "fgsm", "--limit", "12", "--no-checks",
                 "--report"]) == 0
    html = (authors_dir / "report.html").read_text()
    assert "<th>options</th>" in html and "<th>seed</th>" in html and "<th>weights</th>" in html
    assert "steps=5" in html and ">current<" in html


# ----------------------------------------------------------------------------- item 3


def _fake_finished_demo(out: Path, epochs: int) -> None:
    """The files a finished ``pellucid demo --epochs EPOCHS`` leaves (untrained weights: the test
    is about what is overwritten, not about accuracy)."""
    torch.manual_seed(0)
    model = create_model("whitebox-mnist35")
    opt = torch.optim.Adam(model.parameters())
    cfg = TrainConfig(epochs=epochs)
    save_model(model, out, "whitebox-mnist35", extra={"data": {"dataset": "mnist", "classes": [3, 5]},
                                                      "train": asdict(cfg)})
    rows = [{"epoch": e, "train_loss": 0.1} for e in range(1, epochs + 1)]
    save_train_state(out / STATE_FILE, model, opt, torch.Generator().manual_seed(0),
                     {"epoch": epochs, "config": asdict(cfg), "history": rows})
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    save_json_atomic(out / "evaluations" / "pgd-linf-eps0.3.json", {"summary": {"n": 1902}})


def test_item03_demo_with_fewer_epochs_does_not_touch_a_finished_run(tmp_path, capsys):
    out = tmp_path / "demo"
    _fake_finished_demo(out, epochs=15)
    before = snapshot(out)
    t0 = time.perf_counter()
    assert main(["demo", "--out", str(out), "--epochs", "1", "--limit", "8"]) == 2
    assert time.perf_counter() - t0 < 5
    one_line_error(capsys, "15 epochs", "--epochs 1")
    assert snapshot(out) == before


def test_item03_demo_never_overwrites_a_report_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "demo"
    _fake_finished_demo(out, epochs=1)
    (out / "report.html").write_text("<html>my own notes</html>")
    before = snapshot(out)
    assert main(["demo", "--out", str(out), "--epochs", "1", "--limit", "8"]) == 2
    one_line_error(capsys, "report.html", "not written by pellucid")
    assert snapshot(out) == before


def test_item03_evaluate_report_never_overwrites_a_foreign_report_and_fails_first(tmp_path, authors_dir,
                                                                                   capsys, monkeypatch):
    from pellucid.report import evaluation

    d = tmp_path / "copy"
    d.mkdir()
    for name in ("model.safetensors", "config.json"):
        (d / name).write_bytes((authors_dir / name).read_bytes())
    (d / "report.html").write_text("<html>my own notes</html>")
    monkeypatch.setattr(evaluation, "evaluate_robustness", lambda *a, **k: pytest.fail("attacked"))
    before = snapshot(d)
    assert main(["evaluate", str(d), "--limit", "8", "--report"]) == 2
    one_line_error(capsys, "report.html", "not written by pellucid")
    assert snapshot(d) == before


# ----------------------------------------------------------------------------- item 4


HOLD_LOCK = ("import sys, time\nfrom pellucid._io import RunLock\n"
             "with RunLock(sys.argv[1], 'holder'):\n    print('locked', flush=True)\n    time.sleep(60)\n")


def test_item04_a_second_writer_is_refused_at_once(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.perf_counter()
        assert train(out) == 2
        assert time.perf_counter() - t0 < 5
        one_line_error(capsys, f"pid {holder.pid}", "in use")
        assert snapshot(out) == {}
    finally:
        holder.kill()
        holder.wait()
    # the holder died by SIGKILL: its lock is stale and is taken over, with a message
    assert train(out) == 0
    assert f"left by pid {holder.pid}" in capsys.readouterr().err
    assert json.loads((out / LOCK_FILE).read_text() or "null") is None  # released cleanly


# takes the flock, then writes its pid record only after a pause: the window in which a
# concurrent writer once read an empty lock file and could not name the holder
LOCK_THEN_SLOW_PID = ("import fcntl, json, os, sys, time\n"
                      "fd = os.open(os.path.join(sys.argv[1], '.pellucid.lock'), os.O_RDWR | os.O_CREAT)\n"
                      "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(0.4)\n"
                      "os.pwrite(fd, json.dumps({'pid': os.getpid(), 'command': 'slow'}).encode(), 0)\n"
                      "time.sleep(60)\n")


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_item04_refused_writer_names_a_holder_that_has_not_written_its_pid_yet(tmp_path):
    from pellucid._io import RunDirectoryBusyError, RunLock
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", LOCK_THEN_SLOW_PID, str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirectoryBusyError, match=f"in use by pid {holder.pid} \\(slow\\)"):
            with RunLock(out, "second"):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_item04_two_concurrent_trainings_one_wins_one_is_refused(tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "pellucid", "train", "whitebox-mnist35", "--out", str(out),
            "--epochs", "2", *TINY]
    procs = [subprocess.Popen(argv + ["--seed", str(seed)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    winner_seed = next(s for (code, _), s in zip(results, (1, 2)) if code == 0)
    assert "in use by pid" in loser or "already holds a training run" in loser
    assert json.loads((out / "config.json").read_text())["train"]["seed"] == winner_seed


def test_item04_lock_is_reentrant_in_one_process_and_released(tmp_path):
    from pellucid._io import RunLock

    with RunLock(tmp_path, "outer"):
        with RunLock(tmp_path, "inner"):
            pass
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert (tmp_path / LOCK_FILE).read_text() == ""


# ----------------------------------------------------------------------------- item 5


def test_item05_metrics_rows_survive_a_kill_between_state_and_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "whitebox-mnist35", "--out", str(out), "--epochs", "2", *TINY]) == 0
    full = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # killed after the epoch-2 state was committed, before its metrics row was written
    (out / "metrics.jsonl").write_text(json.dumps(full[0]) + "\n")
    assert main(["train", "whitebox-mnist35", "--out", str(out), "--epochs", "3", *TINY, "--resume",
                 "--json"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[:2] == full


def test_item05_a_garbled_metrics_line_does_not_break_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out) == 0
    good = (out / "metrics.jsonl").read_text()
    (out / "metrics.jsonl").write_text(good + '{"epoch": 2, "train_lo\x00\n')
    capsys.readouterr()
    assert main(["train", "whitebox-mnist35", "--out", str(out), "--epochs", "2", *TINY, "--resume"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0] == json.loads(good)


# ----------------------------------------------------------------------------- item 6


def test_item06_orphan_temp_files_are_removed_by_the_next_write(tmp_path):
    from pellucid._io import remove_orphan_temps

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f".metrics.jsonl.{dead.pid}.k2j4h1.tmp"
    orphan.write_text("half a row")
    mine = tmp_path / f".other.json.{os.getpid()}.abc123.tmp"  # a live writer's: kept
    mine.write_text("being written")
    save_json_atomic(tmp_path / "x.json", {"a": 1})
    assert not orphan.exists() and mine.exists()
    assert remove_orphan_temps(tmp_path) == []
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == [mine.name, "x.json"]


def test_item06_writes_fsync_the_file_and_its_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd)
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    save_json_atomic(tmp_path / "r.json", {"b": 2})
    if not os.path.exists("/proc/self/fd"):
        assert len(synced) >= 2
        return
    assert any(s.startswith(str(tmp_path.resolve()) + "/.r.json.") for s in synced), synced  # the data
    assert str(tmp_path.resolve()) in synced  # the rename


def test_item06_a_tensor_file_is_written_under_pellucids_temp_name_only(tmp_path):
    """No other name ever appears beside the target: a temporary file named by a library
    (safetensors' save_file writes a .tmpXXXXXX of its own) would be orphaned by a kill -9 with no
    PID to tell whether its writer is gone, so the next write could not remove it."""
    import threading

    from pellucid._io import save_tensors_atomic

    seen: set[str] = set()
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen.update(os.listdir(tmp_path))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        big = torch.arange(20_000_000, dtype=torch.float32)  # 80 MB: each write takes a while
        for i in range(3):
            save_tensors_atomic(tmp_path / "model.safetensors", {"w": big + i}, {"i": str(i)})
    finally:
        done.set()
        watcher.join()
    foreign = {n for n in seen if n != "model.safetensors" and not n.startswith(".model.safetensors.")}
    assert not foreign, foreign
    assert any(n.startswith(f".model.safetensors.{os.getpid()}.") for n in seen)  # the watcher saw writes
    assert torch.equal(load_file(str(tmp_path / "model.safetensors"))["w"], big + 2)
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]


def test_item06_taking_the_lock_removes_what_a_killed_safetensors_save_file_left(tmp_path, capsys):
    """Older pellucid versions wrote tensors with safetensors' save_file, whose own temporary file
    (Rust's tempfile: ``.tmp`` + 6 letters or digits) a kill -9 orphans at any length. The next
    holder of the run directory's lock removes such files (name and content both match) and
    nothing else."""
    from safetensors.torch import save as safetensors_bytes

    from pellucid._io import RunLock

    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text(json.dumps({"pid": 2 ** 22 + 12345, "command": "old"}) + "\n")
    data = safetensors_bytes({"w": torch.arange(1000.0)})
    orphans = {".tmpAbC123": b"", ".tmpJy0UnL": data[:5], ".tmpx9Y8z7": data[:8],
               ".tmp000000": data[:9], ".tmpQQQQQQ": data[:2000], ".tmpzzzzzz": data}
    keep = {".tmpQwE456": b"my notes", ".tmpLONGER1": b"", "notes.tmpABCDEF": b"x",
            ".tmp12345": b"", "model.safetensors.bak": data[:100], ".tmp654321": b"\0" * 16}
    for name, content in {**orphans, **keep}.items():
        (run / name).write_bytes(content)
    with RunLock(run, "new"):
        pass
    left = set(os.listdir(run))
    assert not (set(orphans) & left), left
    assert set(keep) <= left
    assert f"removed {len(orphans)} unfinished temporary file(s)" in capsys.readouterr().err
    with RunLock(run, "again"):  # nothing more to remove, nothing said
        pass
    assert set(os.listdir(run)) == left
    assert "removed" not in capsys.readouterr().err


def test_item06_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    from pellucid._io import _atomic_write

    save_json_atomic(tmp_path / "keep.json", {"old": True})

    def broken(tmp):
        Path(tmp).write_text("partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        _atomic_write(tmp_path / "keep.json", broken)
    assert json.loads((tmp_path / "keep.json").read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]


# ----------------------------------------------------------------------------- item 8


def test_item08_nan_weights_exit_2_naming_the_tensor(tmp_path, authors_dir, capsys):
    d = tmp_path / "nan"
    d.mkdir()
    state = load_file(str(authors_dir / "model.safetensors"))
    key = sorted(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)[0]
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    save_file(state, str(d / "model.safetensors"))
    (d / "config.json").write_text((authors_dir / "config.json").read_text())
    before = snapshot(d)
    assert main(["evaluate", str(d), "--limit", "8", "--no-checks"]) == 2
    one_line_error(capsys, key)
    assert snapshot(d) == before


def test_item08_nan_outputs_are_refused_before_the_attack():
    from pellucid.errors import InvalidInputError
    from pellucid.report.evaluation import check_outputs

    class Broken(torch.nn.Module):
        def forward(self, x):
            out = x.flatten(1)[:, :2].clone()
            out[1] = float("inf")
            return out

    with pytest.raises(InvalidInputError, match="1 of 3 test images"):
        check_outputs(Broken(), torch.rand(3, 1, 28, 28))


# ----------------------------------------------------------------------------- item 9


def test_item09_resume_refuses_a_state_holding_nan(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out) == 0
    tensors = load_file(str(out / STATE_FILE))
    from safetensors import safe_open
    with safe_open(str(out / STATE_FILE), "pt") as f:
        meta = f.metadata()
    key = next(k for k in sorted(tensors) if k.startswith("model.") and tensors[k].is_floating_point())
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, str(out / STATE_FILE), metadata=meta)
    before = snapshot(out)
    assert main(["train", "whitebox-mnist35", "--out", str(out), "--epochs", "2", *TINY, "--resume"]) == 2
    one_line_error(capsys, "NaN", key)
    assert snapshot(out) == before


class _DivergesInEpoch2(torch.nn.Module):
    """A classifier whose loss turns NaN in its second epoch (a diverging run, made deterministic)."""

    def __init__(self, calls_before_nan: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(784, 2)
        self.calls, self.limit = 0, calls_before_nan

    def forward(self, x):
        self.calls += 1 if self.training else 0
        out = self.linear(x.flatten(1))
        return out * float("nan") if self.calls > self.limit else out


def test_item09_a_diverged_run_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    from pellucid.data.datasets import ImageDataset
    from pellucid.train import fit
    from pellucid.train.checkpointing import TrainingDivergedError

    torch.manual_seed(0)
    images, labels = torch.rand(40, 1, 28, 28), torch.randint(0, 2, (40,))
    ds = ImageDataset(images, labels, ("a", "b"), "random", torch.arange(40))
    cfg = TrainConfig(epochs=3, batch_size=10, val_size=0, val_pgd_steps=0, noise_p=0.0)
    model = _DivergesInEpoch2(calls_before_nan=4)  # 4 steps per epoch: NaN at epoch 2, step 1
    with pytest.raises(TrainingDivergedError, match="epoch 2, step 1.*epoch 1 .* is kept"):
        fit(model, ds, ds.subset(slice(0, 0)), cfg, tmp_path / "run", model_name="mlp", progress=False)
    state = load_file(str(tmp_path / "run" / STATE_FILE))
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1]


# ----------------------------------------------------------------------------- items 14, 15, 16, 18


@pytest.mark.parametrize("extra,needle", [
    (["--batch-size", "0"], "--batch-size"), (["--batch-size", "-5"], "--batch-size"),
    (["--val-size", "-10"], "--val-size"), (["--val-size", "20000"], "--val-size"),
    (["--lr", "nan"], "--lr"), (["--lr", "-1"], "--lr"), (["--lr", "abc"], "--lr"),
    (["--epochs", "0"], "--epochs"), (["--epochs", "-2"], "--epochs"),
    (["--noise-p", "1.5"], "--noise-p"), (["--val-step", "inf"], "--val-step"),
])
def test_items14_15_bad_training_options_fail_at_once_and_write_nothing(tmp_path, capsys, extra, needle):
    out = tmp_path / "run"
    t0 = time.perf_counter()
    assert main(["train", "whitebox-mnist35", "--out", str(out), *extra]) == 2
    assert time.perf_counter() - t0 < 5
    one_line_error(capsys, needle)
    assert not out.exists()


@pytest.mark.parametrize("extra,needle", [
    (["--steps", "0"], "--steps"), (["--step-size", "-1"], "--step-size"),
    (["--check-limit", "-5"], "--check-limit"), (["--attack", "square", "--queries", "0"], "--queries"),
    (["--attack", "apgd-ce", "--restarts", "0"], "--restarts"), (["--eps", "inf"], "--eps"),
    (["--eps", "nan"], "--eps"), (["--limit", "-3"], "--limit"), (["--seed", "-1"], "--seed"),
])
def test_item16_bad_evaluation_options_fail_at_once_and_write_nothing(authors_dir, capsys, extra, needle):
    before = snapshot(authors_dir)
    t0 = time.perf_counter()
    assert main(["evaluate", str(authors_dir), *extra]) == 2
    assert time.perf_counter() - t0 < 5
    one_line_error(capsys, needle)
    assert snapshot(authors_dir) == before


def test_item16_steps_are_what_was_asked(authors_dir, capsys):
    assert main(["evaluate", str(authors_dir), "--steps", "3", "--limit", "8", "--no-checks", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["steps"] == 3 and out["options"]["steps"] == 3


def test_item18_out_that_is_a_file_or_under_a_file(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for out, needle in ((afile, "is a file"), (afile / "sub", "is a file")):
        assert main(["train", "whitebox-mnist35", "--out", str(out), "--epochs", "1"]) == 2
        one_line_error(capsys, "--out", needle)
        assert main(["demo", "--out", str(out), "--epochs", "1"]) == 2
        one_line_error(capsys, "--out", needle)
    assert afile.read_text() == "mine"


def test_item18_unwritable_out_fails_before_any_training(tmp_path, capsys, monkeypatch):
    import pellucid._io as io_

    def read_only(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(io_.tempfile, "mkstemp", read_only)  # what a read-only directory answers
    t0 = time.perf_counter()
    assert main(["train", "whitebox-mnist35", "--out", str(tmp_path / "run"), "--epochs", "1"]) == 2
    assert time.perf_counter() - t0 < 5
    one_line_error(capsys, "--out", "not writable")


def test_item18_unwritable_model_dir_fails_before_the_attack(authors_dir, capsys, monkeypatch):
    import pellucid._io as io_
    from pellucid.report import evaluation

    monkeypatch.setattr(io_.tempfile, "mkstemp", lambda *a, **k: (_ for _ in ()).throw(
        PermissionError(13, "Permission denied")))
    monkeypatch.setattr(evaluation, "evaluate_robustness", lambda *a, **k: pytest.fail("attacked"))
    assert main(["evaluate", str(authors_dir), "--limit", "8"]) == 2
    one_line_error(capsys, "not writable")


def test_items14_18_user_errors_of_the_installed_command_take_under_5_seconds(tmp_path):
    """The console script, cold: import, check, one line, exit 2, nothing written."""
    cases = [["train", "whitebox-mnist35", "--out", str(tmp_path / "a"), "--batch-size", "0"],
             ["train", "whitebox-mnist35", "--out", str(tmp_path / "b"), "--val-size", "999999"],
             ["evaluate", str(tmp_path / "missing"), "--steps", "5"]]
    for argv in cases:
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pellucid", *argv], capture_output=True, text=True,
                              timeout=60)
        seconds = time.perf_counter() - t0
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr and seconds < 5, (argv, seconds)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_item02_weights_are_identified_by_their_tensors_not_file_bytes(tmp_path):
    from pellucid._io import tensors_sha256, weights_sha256

    torch.manual_seed(0)
    state = {"w": torch.randn(3, 4), "scalar": torch.tensor(0.5), "h": torch.ones(2, dtype=torch.bfloat16)}
    save_file(state, str(tmp_path / "a.safetensors"), metadata={"format": "f", "model": "m"})
    save_file(dict(reversed(state.items())), str(tmp_path / "b.safetensors"), metadata={"model": "m"})
    assert weights_sha256(tmp_path / "a.safetensors") == weights_sha256(tmp_path / "b.safetensors") \
        == tensors_sha256(state)
    changed = {**state, "w": state["w"].clone()}
    changed["w"][0, 0] = torch.nextafter(changed["w"][0, 0], torch.tensor(1e9))  # one ulp
    assert tensors_sha256(changed) != tensors_sha256(state)
    assert weights_sha256(tmp_path / "missing.safetensors") is None
