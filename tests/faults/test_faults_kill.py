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
import torch
from safetensors.torch import load_file

DRIVER = Path(__file__).with_name("kill_driver.py")
TRAIN = ["train", "whitebox-mnist35", "--out", "{dir}", "--epochs", "2", "--val-size", "10000",
         "--val-pgd-steps", "0", "--no-progress"]
# the gradient-masking checks (PGD-40 at 9 eps and PGD-100) run on 8 of the 40 images: they are
# most of the command's time and none of its writes
EVALUATE = ["evaluate", "{dir}", "--attack", "pgd", "--steps", "5", "--limit", "40", "--check-limit", "8"]
DEMO = ["demo", "--out", "{dir}", "--epochs", "1", "--limit", "24"]
# how long and where a command ran, and how much of an evaluation an earlier, killed run had
# finished: not part of the result
TIMING = {"seconds", "train_seconds", "epoch_seconds", "model_dir", "record", "report", "reused_chunks"}


def without_timing(obj):
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [without_timing(v) for v in obj]
    return obj


def plans(tmp: Path) -> list[list[dict]]:
    """Two plans, run side by side (one per core): train and evaluate; the demo."""
    rng = random.Random(17)
    argv = {"train": TRAIN, "evaluate": EVALUATE, "demo": DEMO}
    ref_train = str(tmp / "ref-train")

    def scenarios(kills: list[tuple[str, dict]], first: int) -> list[dict]:
        return [{"kind": kind, "dir": str(tmp / f"kill{first + i:02d}-{kind}"), "argv": argv[kind],
                 "kill": kill, **({"copy_from": ref_train} if kind == "evaluate" else {})}
                for i, (kind, kill) in enumerate(kills)]

    # train, 2 epochs x 4 files: before and after each publication, then at random times (a
    # fraction of the uninterrupted run's duration)
    train = [("train", {"write": n, "phase": ("before", "after")[n % 2]}) for n in range(1, 9)]
    train += [("train", {"after_fraction": rng.uniform(0.1, 0.8)}) for _ in range(3)]
    # evaluate: once its chunk of images is kept (write 1), before and after its record is
    # published (write 2), then at random times
    evaluate = [("evaluate", {"write": 1, "phase": "after"}), ("evaluate", {"write": 2, "phase": "before"}),
                ("evaluate", {"write": 2, "phase": "after"})]
    evaluate += [("evaluate", {"after_fraction": rng.uniform(0.1, 0.8)}) for _ in range(2)]
    # demo: in its training (4 writes), at its record (after its chunk), in its figures and report
    demo = [("demo", {"write": 1, "phase": "after"}), ("demo", {"write": 6, "phase": "before"}),
            ("demo", {"write": 10, "phase": "after"}), ("demo", {"after_fraction": rng.uniform(0.1, 0.8)})]
    kills = scenarios(train + evaluate, 0) + scenarios(demo, 16)
    # write kills need no reference run in their plan (the evaluations copy the first plan's
    # training, the random-time kills time their kind's): so that both plans take about as long,
    # the second runs epoch 2's four train kills and the first runs one demo kill
    swapped = [k for k in kills if (k["kind"] == "train" and k["kill"].get("write", 0) >= 5)
               or (k["kind"] == "demo" and k["kill"].get("write") == 10)]
    first = [{"kind": "train", "dir": ref_train, "argv": TRAIN},
             {"kind": "evaluate", "dir": str(tmp / "ref-eval"), "argv": EVALUATE, "copy_from": ref_train},
             *(k for k in kills if (k["kind"] != "demo") != (k in swapped))]
    second = [{"kind": "demo", "dir": str(tmp / "ref-demo"), "argv": DEMO},
              *(k for k in kills if (k["kind"] == "demo") != (k in swapped))]
    return [first, second]


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
    drivers = []
    for i, scenarios in enumerate(plans(tmp)):
        (tmp / f"plan{i}.json").write_text(json.dumps({"scenarios": scenarios}))
        drivers.append(subprocess.Popen([sys.executable, str(DRIVER), str(tmp / f"plan{i}.json"),
                                         str(tmp / f"result{i}.json")], stderr=subprocess.PIPE, text=True))
    for driver in drivers:
        assert driver.wait(timeout=900) == 0, driver.stderr.read()[-3000:]
    return [o for i in range(len(drivers)) for o in json.loads((tmp / f"result{i}.json").read_text())]


def same_tensors(a: Path, b: Path) -> bool:
    """Bit-equal tensors and metadata (safetensors' header order is not fixed between processes)."""
    from safetensors import safe_open

    x, y = load_file(str(a)), load_file(str(b))
    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        same_meta = without_timing(_meta(fa.metadata())) == without_timing(_meta(fb.metadata()))
    return same_meta and x.keys() == y.keys() and all(
        x[k].dtype == y[k].dtype and x[k].shape == y[k].shape and torch.equal(x[k], y[k]) for k in x)


def _meta(meta: dict | None) -> dict:
    """Metadata values that are JSON, parsed (the training state keeps its metrics rows there)."""
    out = {}
    for k, v in (meta or {}).items():
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def test_killed_at_20_moments_nothing_is_lost_or_corrupt(outcomes):
    refs = {o["kind"]: o for o in outcomes if "kill" not in o}
    kills = [o for o in outcomes if "kill" in o]
    assert len(kills) == 20
    assert all(r["code"] == 0 for r in refs.values()), refs
    # every planned write kill lands (asserted below); random-time kills may rarely miss a fast run
    assert sum(o["killed"] for o in kills) >= 17, [(o["dir"], o["killed"]) for o in kills]
    for o in kills:
        assert "write" not in o["kill"] or o["killed"], f"{o['dir']}: kill point not reached"
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
            for name in ("model.safetensors", "train_state.safetensors"):
                assert same_tensors(run_dir / name, ref / name), (o["dir"], name)
            assert (run_dir / "config.json").read_text() == (ref / "config.json").read_text()
            assert metrics(run_dir) == metrics(ref), o["dir"]  # no lost row
        if o["kind"] in ("evaluate", "demo"):
            assert records(run_dir) == records(ref), o["dir"]
        if o["kind"] == "demo":
            assert (run_dir / "report.html").read_text().rstrip().endswith("</html>")
        assert set(names) == set(files(ref)), (o["dir"], set(names) ^ set(files(ref)))
