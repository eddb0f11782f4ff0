"""Table 1 of Metric as Transform: Fashion-MNIST metric MLP, best test accuracy per (metric, H).

Paper protocol: metric layer -> BatchNorm1d -> LayerNorm -> ELU -> Linear, Adam lr 1e-4, cosine
schedule over 50 epochs, batch 50, 60k train images, best test accuracy over epochs, 8 seeds.
``--epochs`` shortens the schedule (the cosine decay is then over the shorter run), for machines
that cannot afford 50 epochs per cell; the JSON records what was run.

``--cost-only STEPS`` trains nothing: it times STEPS steps per cell and projects the run length.

``--runs-dir DIR`` keeps every run as a model directory and resumes the interrupted ones when the
same command is run again (the H = 500 runs of the slow metrics take hours).

Prints ONE JSON line, e.g.
``nice -n 15 .venv/bin/python -m benchmarks metric_table1 --epochs 3 --seeds 2 --cells l2:5,l2:100``
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # python benchmarks/NAME.py

from benchmarks import _harness as h  # noqa: E402

SUMMARY = "Table 1 of Metric as Transform: Fashion-MNIST metric MLP, best test accuracy per (metric, H)"
EXPECTED_TIME = ("hours: one 50-epoch run per seed and cell, 0.5-2.6 h each (docs/metric.md); "
                 "--cost-only STEPS takes seconds")

PUBLISHED = {  # mean over 8 seeds; H = 5, 10, 20, 100, 500
    "l0.5": [72.92, 78.06, 80.13, 83.16, 84.74], "l1": [76.98, 81.71, 82.95, 85.36, 87.02],
    "l2": [77.84, 82.86, 83.72, 86.16, 87.67], "l20": [79.39, 82.90, 83.97, 85.80, 87.63],
    "stereo": [80.90, 84.96, 86.32, 88.23, 89.32], "linear": [81.17, 84.92, 86.47, 88.42, 89.72],
    "convex": [88.29, 88.96, 88.90, 88.48, 88.49], "invex": [88.54, 89.29, 88.18, 88.19, 89.11],
    "ordinary": [84.35, 85.91, 86.14, 87.09, 87.50]}
PUBLISHED["ordinary-mlp"] = PUBLISHED["ordinary"]  # a second reading of the same published row
PUBLISHED["convex-icnn"] = PUBLISHED["convex"]  # the convex row with the notebook's network
HIDDEN = [5, 10, 20, 100, 500]


def run_cell(metric: str, hidden: int, seed: int, epochs: int, runs_dir: Path | None = None,
             compiled: bool = False, factored: bool = False, device=None) -> dict:
    """One run through the recipe on ``device`` (default: the CPU): in ``runs_dir`` (checkpointed
    every epoch, resumed if interrupted) or in a temporary directory."""
    import torch

    from pellucid.errors import Stopped
    from pellucid.distributed import Job
    from pellucid.train.checkpointing import has_training_state
    from pellucid.train.metric_recipes import MetricMLPConfig, train_metric_mlp
    from pellucid.train.trainer import training_job

    with tempfile.TemporaryDirectory() as tmp, training_job(Job(device=device or torch.device("cpu"))):
        out = (runs_dir or Path(tmp)) / f"{metric}_{hidden}_s{seed}"
        cfg = MetricMLPConfig(metric=metric, hidden=hidden, epochs=epochs, seed=seed, compiled_kernels=compiled,
                              factored_output=factored)
        t = time.perf_counter()
        resume = has_training_state(out)
        # a cell takes minutes to hours: say which one runs, then a line per epoch (stderr)
        h.log(f"metric_table1: {metric} H = {hidden}, seed {seed}, {epochs} epochs"
              f"{', resuming ' + str(out) if resume else ''}")
        try:
            hist = train_metric_mlp(cfg, out, resume=resume, progress=True)["epochs"]
        except Stopped as stopped:
            if runs_dir is None:
                raise Stopped(stopped.signum, "the cell ran in a temporary directory, so nothing of it is "
                                              "kept (--runs-dir keeps runs)") from None
            raise stopped.continued_by("the same command continues it") from None
    return {"best": 100 * hist[-1]["best_test_accuracy"], "final": 100 * hist[-1]["test_accuracy"],
            "seconds": sum(r["epoch_seconds"] for r in hist), "resumed_run_seconds": time.perf_counter() - t}


def cost_estimate(cells: list[str], steps: int, epochs: int, threads: int, compiled: bool = False,
                  factored: bool = False, device=None) -> dict:
    """Seconds per training step (batch 50, after one warm-up step) on ``device`` (default: the
    CPU) and the projected run length. With ``compiled`` or ``factored``, every cell is also timed
    without them (eager, direct) in the same process, for the ratio."""
    import torch

    from pellucid.models import create_model

    device = device or torch.device("cpu")
    x = (torch.rand(50, 1, 28, 28) * 2 - 1).to(device)
    y = torch.randint(0, 10, (50,)).to(device)

    def seconds_per_step(metric: str, hidden: int, compiled_now: bool, factored_now: bool) -> float:
        torch.manual_seed(0)
        model = create_model("metric-mlp", metric=metric, hidden=hidden).to(device)
        for m in model.modules():
            if hasattr(m, "compiled"):
                m.compiled = compiled_now
            if hasattr(m, "factored_output"):
                m.factored_output = factored_now
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step():
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        step()  # warm-up (and compilation)
        h.synchronize(device)
        t = time.perf_counter()
        for _ in range(steps):
            step()
        h.synchronize(device)
        return (time.perf_counter() - t) / steps

    out = {}
    for cell in cells:
        metric, hidden = cell.split(":")
        per_step = seconds_per_step(metric, int(hidden), compiled, factored)
        out[cell] = {"ms_per_step": round(1000 * per_step, 1),
                     "projected_hours_per_run": round(per_step * 1200 * epochs / 3600, 2)}
        if compiled or factored:
            eager = seconds_per_step(metric, int(hidden), False, False)
            out[cell].update(ms_per_step_eager=round(1000 * eager, 1), speedup=round(eager / per_step, 2))
    return {"cost_only": True, "steps": steps, "epochs": epochs, "threads": threads,
            "compiled_kernels": compiled, "factored_output": factored, "steps_per_epoch": 1200,
            "cells": out, "device": device.type}


def parser():
    p = h.parser(__name__, __doc__, threads=1, device="cpu")
    p.add_argument("--cells", default="l2:100", help="comma list of metric:H")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--runs-dir", type=Path, default=None, metavar="DIR",
                   help="train each run as a model directory DIR/<metric>_<H>_s<seed>, checkpointed "
                        "every epoch; re-running the same command resumes interrupted runs")
    p.add_argument("--cost-only", type=int, default=0, metavar="STEPS",
                   help="do not train: time STEPS training steps per cell and project a run's cost")
    p.add_argument("--compiled-kernels", action="store_true",
                   help="lp cells with p != 2, convex and ordinary-mlp: torch.compile'd distance loops "
                        "(needs a C++ compiler)")
    p.add_argument("--factored-output", action="store_true",
                   help="invex and ordinary cells: the last layer and the norm as one quadratic form "
                        "(the same function, about 1.5x faster at H >= 100)")
    return p


def parse_cells(p, text: str, table: bool) -> list[tuple[str, int]]:
    """``metric:H,...`` as pairs; a usage error (exit 2, before any work) names a bad one. A
    training run takes the table's own cells (its published value is looked up at the end);
    ``--cost-only`` any metric of the table at any H."""
    cells = []
    for cell in text.split(","):
        metric, _, hidden = cell.strip().partition(":")
        if metric not in PUBLISHED:
            p.error(f"--cells: unknown metric {metric!r} in {cell!r}; one of {', '.join(PUBLISHED)}")
        if not hidden.isdigit() or int(hidden) < 1:
            p.error(f"--cells: {cell!r} is not metric:H with H a positive whole number")
        if table and int(hidden) not in HIDDEN:
            p.error(f"--cells: H = {hidden} is not a Table 1 column ({', '.join(map(str, HIDDEN))}); "
                    "--cost-only times any H")
        cells.append((metric, int(hidden)))
    return cells


def main(argv: list[str] | None = None) -> dict:
    p = parser()
    args = h.parse(p, argv)
    for name in ("seeds", "epochs"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1 (got {getattr(args, name)})")
    if args.cost_only < 0 or args.first_seed < 0:
        p.error("--cost-only and --first-seed cannot be negative")
    cells_asked = parse_cells(p, args.cells, table=not args.cost_only)
    h.preload("torch", "pellucid.models", "pellucid.train.checkpointing", "pellucid.train.metric_recipes")
    if args.cost_only:
        return cost_estimate([f"{m}:{n}" for m, n in cells_asked], args.cost_only, args.epochs, args.threads,
                             args.compiled_kernels, args.factored_output, args.device)
    t0 = time.perf_counter()
    cells = {}
    for metric, hidden in cells_asked:
        cell = f"{metric}:{hidden}"
        runs = [run_cell(metric, int(hidden), s, args.epochs, args.runs_dir, args.compiled_kernels,
                         args.factored_output, args.device)
                for s in range(args.first_seed, args.first_seed + args.seeds)]
        best = [r["best"] for r in runs]
        pub = PUBLISHED[metric][HIDDEN.index(int(hidden))]
        cells[cell] = {"best_mean": round(statistics.mean(best), 2),
                       "best_std": round(statistics.stdev(best), 2) if len(best) > 1 else None,
                       "final_mean": round(statistics.mean(r["final"] for r in runs), 2),
                       "published": pub, "diff": round(statistics.mean(best) - pub, 2),
                       "seconds_per_run": round(statistics.mean(r["seconds"] for r in runs), 1)}
        h.log(json.dumps({"cell": cell, **cells[cell]}))
    return {"epochs": args.epochs, "seeds": list(range(args.first_seed, args.first_seed + args.seeds)),
            "protocol": f"Adam 1e-4, cosine over {args.epochs} epochs, batch 50, 60k train, best test acc",
            "cells": cells, "seconds": h.seconds_since(t0), "threads": args.threads,
            "compiled_kernels": args.compiled_kernels, "factored_output": args.factored_output,
            "device": args.device.type}


if __name__ == "__main__":
    h.script(__name__)
