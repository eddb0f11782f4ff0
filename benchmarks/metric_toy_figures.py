"""The 2-D toy figures of docs/metric.md: single metric neurons over the plane, and the decision
regions of small epsilon-softmax classifiers (two moons, circles) with their rejection regions.

For each distance (lp for p in {0.5, 1, 2, 20}, stereo, cosine, convex, invex, and a linear
neuron for contrast) one classifier of 8 neurons per dataset is trained full-batch (Adam 0.03,
400 steps, seeded, data-initialised centres). Writes ``docs/img/metric-toy-{neurons,moons,circles}.png``
and prints ONE JSON line (train accuracies, fraction of the plane rejected, seconds).

    .venv/bin/python -m benchmarks metric_toy_figures [--out docs/img] [--seed 0]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # python benchmarks/NAME.py

from benchmarks import _harness as h  # noqa: E402

SUMMARY = "The 2-D toy figures of docs/metric.md: metric neurons and epsilon-softmax decision regions"
EXPECTED_TIME = "~17 s on 2 threads (results/metric_toy_figures.jsonl)"


def parser():
    p = h.parser(__name__, __doc__, threads=2, seed=0)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "img")
    p.add_argument("--steps", type=int, default=400)
    return p


def main(argv: list[str] | None = None) -> dict:
    args = h.parse(parser(), argv)
    from pellucid.viz.toy import render_all

    t0 = time.perf_counter()
    summary = render_all(args.out, seed=args.seed, steps=args.steps)
    return {"seed": args.seed, "steps": args.steps, **summary, "seconds": h.seconds_since(t0),
            "threads": args.threads, "device": "cpu"}


if __name__ == "__main__":
    h.script(__name__)
