"""Table 1's ordinary / invex cells *trained* with emulated TF32 matrix multiplies.

The authors' notebook trained on a GPU with ``torch.set_float32_matmul_precision('high')``.
``metric_tf32_probe.py`` only rounded at inference; this script trains a Table 1 cell from scratch
with every ``F.linear`` (forward and both backward products) on TF32-rounded operands
(``metric_tf32_probe.tf32_linear``), and with the distance network evaluated in the notebook's
order, ``g(x - c_j)`` on each difference (``InvexDistance.invex_value`` splits the first layer,
which would put the rounding elsewhere). Everything else is ``metric_table1.py``'s protocol and
seed. Not emulated: the power iterations of the spectral norm (no-grad ``@``, invex only).
Checkpointed every epoch; the same command resumes. Prints ONE JSON line.

    python benchmarks/metric_tf32_training.py --cell ordinary:5 --runs-dir runs/metric/tf32 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from metric_table1 import HIDDEN, PUBLISHED
from metric_tf32_probe import _check_rounding, tf32_linear
from pellucid.nn.invex import InvexDistance
from pellucid.report import environment
from pellucid.train.checkpointing import STATE_FILE
from pellucid.train.metric_recipes import MetricMLPConfig, train_metric_mlp


@contextlib.contextmanager
def unsplit_invex_value() -> Iterator[None]:
    """``InvexDistance.invex_value`` as the notebook computes it: the whole flow on each ``x - c_j``."""
    original = InvexDistance.invex_value

    def plain(self, x):
        (b, d), h = x.shape, self.out_features
        g = self.flow((x[:, None, :] - self.centres[None]).reshape(-1, d))
        return (g - self.reference).norm(dim=1).view(b, h)

    InvexDistance.invex_value = plain
    try:
        yield
    finally:
        InvexDistance.invex_value = original


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", default="ordinary:5", help="metric:H, metric in {ordinary, invex}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs-dir", type=Path, required=True, metavar="DIR")
    ap.add_argument("--no-tf32", action="store_true", help="the control: same code path in float32")
    args = ap.parse_args()
    metric, hidden = args.cell.split(":")
    if metric not in ("ordinary", "invex"):
        raise SystemExit(f"--cell: metric must be ordinary or invex, got {metric!r}")
    _check_rounding()
    torch.set_num_threads(args.threads)
    tag = "fp32" if args.no_tf32 else "tf32"
    out = args.runs_dir / f"{metric}_{hidden}_s{args.seed}_{tag}"
    cfg = MetricMLPConfig(metric=metric, hidden=int(hidden), epochs=args.epochs, seed=args.seed)
    t0 = time.perf_counter()
    with unsplit_invex_value(), (contextlib.nullcontext() if args.no_tf32 else tf32_linear()):
        hist = train_metric_mlp(cfg, out, resume=(out / STATE_FILE).is_file(), progress=False)["epochs"]
    best, final = 100 * hist[-1]["best_test_accuracy"], 100 * hist[-1]["test_accuracy"]
    pub = PUBLISHED[metric][HIDDEN.index(int(hidden))]
    print(json.dumps({"benchmark": "metric_tf32_training", "cell": args.cell, "seed": args.seed,
                      "matmul": tag, "epochs": args.epochs, "best": round(best, 2), "final": round(final, 2),
                      "published": pub, "diff": round(best - pub, 2), "run": str(out),
                      "train_seconds": round(sum(r["epoch_seconds"] for r in hist), 1),
                      "seconds_this_call": round(time.perf_counter() - t0, 1), "environment": environment()}))


if __name__ == "__main__":
    main()
