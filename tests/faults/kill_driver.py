"""Kill ``pellucid train / evaluate / demo`` with SIGKILL at chosen moments, then finish the work.

Run by ``test_faults_kill.py`` as ``python kill_driver.py PLAN.json RESULT.json``. One process
imports torch and pellucid once and forks a child per command, so each kill costs a fork rather
than an interpreter start. The parent runs no torch op before forking (``OMP_NUM_THREADS=1``
keeps torch from starting a thread pool), which keeps the children fork-safe.

A scenario's child kills itself with SIGKILL just before the n-th ``os.replace`` into the run
directory (a temporary file written and fsynced, not yet published) or just after it (published,
the directory not yet fsynced), or the parent kills it after a fraction of the time the
uninterrupted run of the same kind took (which the plan runs first). Right after the kill the
parent checks the directory's integrity; then it runs the command a user would run next until it
succeeds, so the test can compare the result with an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

from pellucid.cli.main import main  # noqa: E402

for _name in ("train", "evaluate", "demo"):  # import every module a child needs before forking
    __import__(f"pellucid.cli.{_name}")
import pellucid.report.evaluation  # noqa: E402,F401
import pellucid.report.run  # noqa: E402,F401
import pellucid.train  # noqa: E402,F401


def child(argv: list[str], run_dir: Path, kill: dict | None) -> None:
    """In the forked child: run ``pellucid ARGV``, dying by SIGKILL at the planned write."""
    if kill and "write" in kill:
        real, count = os.replace, [0]
        target = str(run_dir.resolve())

        def replace(src, dst, *args, **kwargs):
            if str(Path(dst).resolve()).startswith(target):
                count[0] += 1
                if count[0] == kill["write"] and kill["phase"] == "before":
                    os.kill(os.getpid(), signal.SIGKILL)
                real(src, dst, *args, **kwargs)
                if count[0] == kill["write"] and kill["phase"] == "after":
                    os.kill(os.getpid(), signal.SIGKILL)
                return
            real(src, dst, *args, **kwargs)

        os.replace = replace
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    try:
        code = main(argv)
    except BaseException:  # noqa: BLE001  (an internal error is a failed scenario, not a hang)
        code = 70
    os._exit(code)


def run(argv: list[str], run_dir: Path, kill: dict | None = None, delay: float | None = None) -> dict:
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        child(argv, run_dir, kill)
    done, status = 0, 0
    if delay is not None:
        deadline = t0 + delay
        while time.perf_counter() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)  # a child that finished early is reaped here
            if done:
                break
            time.sleep(0.005)
        else:
            os.kill(pid, signal.SIGKILL)
    if not done:
        _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    return {"killed": killed, "code": None if killed else os.WEXITSTATUS(status),
            "seconds": round(time.perf_counter() - t0, 3)}


def integrity(run_dir: Path) -> list[str]:
    """What is wrong with ``run_dir`` right after a kill: unreadable files, lost metrics rows.
    Temporary files of an interrupted write are allowed here (the next write removes them)."""
    from safetensors.torch import load_file

    problems = []
    for path in run_dir.rglob("*"):
        if not path.is_file() or path.name.endswith(".tmp") or path.name == ".pellucid.lock":
            continue
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".jsonl":
                [json.loads(line) for line in path.read_text().splitlines()]
            elif path.suffix == ".safetensors":
                load_file(str(path))
            elif path.suffix == ".png":
                if path.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n" or path.read_bytes()[-8:-4] != b"IEND":
                    raise ValueError("not a whole PNG")
            elif path.suffix == ".html":
                if not path.read_text().rstrip().endswith("</html>"):
                    raise ValueError("not a whole report")
        except Exception as e:  # noqa: BLE001
            problems.append(f"{path.name}: {type(e).__name__}: {e}")
    state = run_dir / "train_state.safetensors"
    if state.is_file():
        from safetensors import safe_open

        with safe_open(str(state), "pt") as f:
            history = json.loads(f.metadata()["info"])["history"]
        metrics = run_dir / "metrics.jsonl"
        rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
        if rows != history[:len(rows)] or len(history) - len(rows) > 1:
            problems.append(f"metrics.jsonl has {len(rows)} rows, the state {len(history)}")
    return problems


def next_command(kind: str, argv: list[str], run_dir: Path) -> list[str]:
    """What a user runs after a kill: ``--resume`` when a training state (of a finished epoch or
    within one) was committed, as the refusal of a plain re-run says."""
    from pellucid.train.checkpointing import has_training_state

    if kind == "train" and has_training_state(run_dir):
        return argv + ["--resume"]
    return argv


def main_driver(plan_path: str, result_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    results, seconds = [], {}  # kind -> duration of its uninterrupted (reference) run
    for scenario in plan["scenarios"]:
        run_dir = Path(scenario["dir"])
        if scenario.get("copy_from"):
            shutil.copytree(scenario["copy_from"], run_dir)
        argv = [a.replace("{dir}", str(run_dir)) for a in scenario["argv"]]
        kill = scenario.get("kill") or {}
        delay = kill["after_fraction"] * seconds[scenario["kind"]] if "after_fraction" in kill else None
        outcome = run(argv, run_dir, kill, delay)
        if not kill:
            seconds[scenario["kind"]] = outcome["seconds"]
        outcome["integrity"] = integrity(run_dir) if run_dir.exists() else []
        outcome["finish"] = []
        for _ in range(3):  # a finished command, whatever the kill left
            if outcome["finish"] and outcome["finish"][-1]["code"] == 0:
                break
            if not outcome["finish"] and outcome["code"] == 0:
                break
            outcome["finish"].append(run(next_command(scenario["kind"], argv, run_dir), run_dir))
        results.append({**scenario, **outcome})
    Path(result_path).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main_driver(sys.argv[1], sys.argv[2])
