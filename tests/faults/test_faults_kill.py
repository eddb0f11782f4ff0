"""Kill -9 at 20 moments of ``train``, ``evaluate`` and ``demo``: nothing lost, nothing corrupt.

After each SIGKILL (see ``kill_driver.py``) the run directory must be readable, with no metrics
row lost; the command a user runs next (``--resume`` when a training state was committed, else
the same command) must finish, leave no temporary file and give what an uninterrupted run gives,
bit for bit (wall-clock timings aside).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

DRIVER = Path(__file__).with_name("kill_driver.py")
TRAIN = ["train", "whitebox-mnist35", "--out", "{dir}", "--epochs", "2", "--val-size", "10000",
         "--val-pgd-steps", "2", "--no-progress"]
EVALUATE = ["evaluate", "{dir}", "--attack", "pgd", "--steps", "5", "--limit", "40", "--check-limit",
            "40", "--report"]
DEMO = ["demo", "--out", "{dir}", "--epochs", "1", "--limit", "24"]
TIMING = {"seconds", "train_seconds", "epoch_seconds", "model_dir", "record", "report"}


def without_timing(obj):
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [without_timing(v) for v in obj]
    return obj


def plan(tmp: Path) -> list[dict]:
    rng = random.Random(17)
    ref = [{"kind": "train", "dir": str(tmp / "ref-train"), "argv": TRAIN},
           {"kind": "evaluate", "dir": str(tmp / "ref-eval"), "argv": EVALUATE,
            "copy_from": str(tmp / "ref-train")},
           {"kind": "demo", "dir": str(tmp / "ref-demo"), "argv": DEMO}]
    kills = []
    # train, 2 epochs x 4 files: before and after each publication, then two at random times
    kills += [("train", {"write": n, "phase": ("before", "after")[n % 2]}) for n in range(1, 9)]
    kills += [("train", {"after_seconds": rng.uniform(0.3, 2.5)}) for _ in range(2)]
    # evaluate: the record, the figures, the report
    kills += [("evaluate", {"write": 1, "phase": "before"}), ("evaluate", {"write": 1, "phase": "after"}),
              ("evaluate", {"write": 3, "phase": "before"}), ("evaluate", {"write": 6, "phase": "after"}),
              ("evaluate", {"after_seconds": rng.uniform(0.5, 2.0)})]
    # demo: its training, its record, its report
    kills += [("demo", {"write": 1, "phase": "after"}), ("demo", {"write": 4, "phase": "before"}),
              ("demo", {"write": 5, "phase": "after"}), ("demo", {"write": 9, "phase": "before"}),
              ("demo", {"after_seconds": rng.uniform(1.0, 4.0)})]
    argv = {"train": TRAIN, "evaluate": EVALUATE, "demo": DEMO}
    scenarios = [{"kind": kind, "dir": str(tmp / f"kill{i:02d}-{kind}"), "argv": argv[kind], "kill": kill,
                  **({"copy_from": str(tmp / "ref-train")} if kind == "evaluate" else {})}
                 for i, (kind, kill) in enumerate(kills)]
    return ref + scenarios


def files(run_dir: Path) -> dict[str, Path]:
    return {str(p.relative_to(run_dir)): p for p in run_dir.rglob("*") if p.is_file()}


def records(run_dir: Path) -> dict[str, dict]:
    return {p.name: without_timing(json.loads(p.read_text()))
            for p in sorted((run_dir / "evaluations").glob("*.json"))}


def metrics(run_dir: Path) -> list[dict]:
    return [without_timing(json.loads(line)) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kill")
    (tmp / "plan.json").write_text(json.dumps({"scenarios": plan(tmp)}))
    done = subprocess.run([sys.executable, str(DRIVER), str(tmp / "plan.json"), str(tmp / "result.json")],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp / "result.json").read_text())


def test_killed_at_20_moments_nothing_is_lost_or_corrupt(outcomes):
    refs = {o["kind"]: o for o in outcomes if "kill" not in o}
    kills = [o for o in outcomes if "kill" in o]
    assert len(kills) == 20
    assert all(r["code"] == 0 for r in refs.values()), refs
    assert sum(o["killed"] for o in kills) >= 18, [(o["dir"], o["killed"]) for o in kills]
    for o in kills:
        assert all("write" not in o["kill"] or o["killed"] for _ in [0]), f"{o['dir']}: kill point not reached"
        assert o["integrity"] == [], (o["dir"], o["kill"], o["integrity"])
        assert o["finish"] == [] or o["finish"][-1]["code"] == 0, (o["dir"], o["finish"])
        assert len(o["finish"]) <= 1, (o["dir"], o["finish"])  # one command finishes the work


def test_after_the_kill_the_next_command_gives_the_uninterrupted_result(outcomes):
    refs = {o["kind"]: Path(o["dir"]) for o in outcomes if "kill" not in o}
    for o in (o for o in outcomes if "kill" in o):
        run_dir, ref = Path(o["dir"]), refs[o["kind"]]
        names = files(run_dir)
        assert not [n for n in names if n.endswith(".tmp")], (o["dir"], sorted(names))  # no orphan
        assert (run_dir / ".pellucid.lock").read_text() == ""  # released
        if o["kind"] in ("train", "demo"):
            assert (run_dir / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes(), o["dir"]
            assert (run_dir / "config.json").read_text() == (ref / "config.json").read_text()
            assert metrics(run_dir) == metrics(ref), o["dir"]  # no lost row
            state, ref_state = (load_file(str(d / "train_state.safetensors")) for d in (run_dir, ref))
            assert state.keys() == ref_state.keys()
            assert all((state[k] == ref_state[k]).all() for k in state), o["dir"]
        if o["kind"] in ("evaluate", "demo"):
            assert records(run_dir) == records(ref), o["dir"]
            assert (run_dir / "report.html").read_text().rstrip().endswith("</html>")
        assert set(names) == set(files(ref)), (o["dir"], set(names) ^ set(files(ref)))
