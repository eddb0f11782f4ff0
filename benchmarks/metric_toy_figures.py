"""The 2-D toy figures of docs/metric.md: single metric neurons over the plane, and the decision
regions of small epsilon-softmax classifiers (two moons, circles) with their rejection regions.

For each distance (lp for p in {0.5, 1, 2, 20}, stereo, cosine, convex, invex, and a linear
neuron for contrast) one classifier of 8 neurons per dataset is trained full-batch (Adam 0.03,
400 steps, seeded, data-initialised centres). Writes ``docs/img/metric-toy-{neurons,moons,circles}.png``
and prints ONE JSON line (train accuracies, fraction of the plane rejected, seconds).

    .venv/bin/python benchmarks/metric_toy_figures.py [--out docs/img] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from pellucid.viz.toy import render_all


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "img")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    summary = render_all(args.out, seed=args.seed, steps=args.steps)
    print(json.dumps({"benchmark": "metric_toy_figures", "seed": args.seed, "steps": args.steps, **summary,
                      "seconds": round(time.perf_counter() - t0, 1), "threads": args.threads,
                      "torch": torch.__version__, "python": platform.python_version(), "device": "cpu"}))


if __name__ == "__main__":
    main()
