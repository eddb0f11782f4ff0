"""Fixed costs of a ``pellucid`` process that two code choices rest on; every figure from fresh processes.

``adam``: a process imports torch and ``pellucid.models``, builds the white-box network,
back-propagates one batch, then creates and steps one optimizer: ``torch.optim.Adam`` (whose first
call imports ``torch._dynamo``) or ``pellucid.train.optim.Adam``. Reported: the seconds of that
create-and-step, measured inside the process, and the whole process's wall time (normal exit).
Why ``pellucid.train.optim`` exists.

``exit``: each command runs through ``pellucid.cli.main.main`` and then ends either normally
(``sys.exit``: interpreter finalisation) or by running the ``atexit`` handlers, flushing and
calling ``os._exit`` (no finalisation). Reported: the whole process's wall time of each. Commands:
``evaluate --help`` and a usage error of ``train`` (neither loads torch: the parsers are built from
torch-free catalogues, so they show the floor), ``explain`` on a random-init ResNet-50 (imports
torchvision), and with ``--model-dir`` a tiny FGSM (native) and APGD-CE (ART) evaluation. Why the
console entry exits normally.

Medians over ``--repeats``, the variants alternating, so background load hits both alike. Prints
ONE JSON line.

    .venv/bin/python -m benchmarks startup_costs --repeats 7 [--model-dir DIR]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # python benchmarks/NAME.py

from benchmarks import _harness as h  # noqa: E402

SUMMARY = "Fixed costs of a pellucid process (torch's Adam import, interpreter exit), from fresh processes"
EXPECTED_TIME = ("~30 s for --only adam: 14 fresh processes of 1.4-2.4 s (docs/whitebox.md); the exit "
                 "part runs 3 commands (5 with --model-dir) x 14 processes more")

ADAM_CHILD = """
import sys, time
import torch
import torch.nn.functional as F
from pellucid.models import whitebox_mnist35
torch.manual_seed(0)
model = whitebox_mnist35().train()
F.cross_entropy(model(torch.rand(16, 1, 28, 28)), torch.randint(0, 2, (16,))).backward()
t0 = time.perf_counter()
if sys.argv[1] == "torch":
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=3e-6)
else:
    from pellucid.train.optim import Adam
    opt = Adam(model.parameters(), lr=3e-3, weight_decay=3e-6)
opt.step()
opt.zero_grad(set_to_none=True)
print(time.perf_counter() - t0, "torch._dynamo" in sys.modules)
"""

EXIT_CHILD = """
import atexit, os, sys
from pellucid.cli.main import main
code = main(sys.argv[2:])
if sys.argv[1] == "fast":
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
"""


def _run(code: str, *args: str) -> tuple[float, str, int]:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    return time.perf_counter() - t0, done.stdout, done.returncode


def _summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def measure_adam(repeats: int) -> dict:
    inside: dict[str, list[float]] = {"torch": [], "pellucid": []}
    wall: dict[str, list[float]] = {"torch": [], "pellucid": []}
    dynamo: dict[str, bool] = {}
    for _ in range(repeats):
        for which in inside:
            seconds, out, rc = _run(ADAM_CHILD, which)
            if rc != 0:
                raise SystemExit(f"adam child ({which}) failed with exit code {rc}")
            step, imported = out.split()
            inside[which].append(float(step))
            wall[which].append(seconds)
            dynamo[which] = imported == "True"
    return {"create_and_step_s": {k: _summary(v) for k, v in inside.items()},
            "process_s": {k: _summary(v) for k, v in wall.items()},
            "imports_torch_dynamo": dynamo,
            "saving_create_and_step_s": round(statistics.median(inside["torch"])
                                              - statistics.median(inside["pellucid"]), 3),
            "saving_process_s": round(statistics.median(wall["torch"])
                                      - statistics.median(wall["pellucid"]), 3)}


def measure_exit(repeats: int, model_dir: str | None, scratch: str) -> dict:
    commands = {"evaluate --help": ["evaluate", "--help"],
                "train usage error": ["train", "whitebox-mnist35", "--out", f"{scratch}/x",
                                      "--batch-size", "0"],
                "explain resnet50 (random init)": ["explain", "--model", "resnet50", "--weights", "none",
                                                   "--image", "skimage:chelsea", "--steps", "1"]}
    if model_dir:
        commands["evaluate fgsm, 8 images"] = ["evaluate", model_dir, "--attack", "fgsm", "--limit", "8",
                                               "--no-checks"]
        commands["evaluate apgd-ce (ART), 8 images"] = ["evaluate", model_dir, "--attack", "apgd-ce",
                                                         "--steps", "2", "--limit", "8", "--no-checks"]
    out = {}
    for name, argv in commands.items():
        times: dict[str, list[float]] = {"fast": [], "normal": []}
        codes = set()
        for _ in range(repeats):
            for mode in times:
                seconds, _, rc = _run(EXIT_CHILD, mode, *argv)
                times[mode].append(seconds)
                codes.add(rc)
        out[name] = {**{k: _summary(v) for k, v in times.items()}, "exit_codes": sorted(codes),
                     "saving_s": round(statistics.median(times["normal"])
                                       - statistics.median(times["fast"]), 3)}
    return out


def parser():
    p = h.parser(__name__, __doc__)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--model-dir", default=None,
                   help="a trained whitebox-mnist35 model directory: also time two tiny evaluations")
    p.add_argument("--only", choices=["adam", "exit"], default=None)
    return p


def main(argv: list[str] | None = None) -> dict:
    args = h.parse(parser(), argv)
    h.preload("torch")  # as before: the parent has torch loaded (and its files cached) while children run
    result = {"cpus": os.cpu_count(), "repeats": args.repeats}
    if args.only in (None, "adam"):
        result["adam"] = measure_adam(args.repeats)
    if args.only in (None, "exit"):
        with tempfile.TemporaryDirectory() as scratch:
            result["exit"] = measure_exit(args.repeats, args.model_dir, scratch)
    return result


if __name__ == "__main__":
    h.script(__name__)
