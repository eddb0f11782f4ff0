"""Metric ResNet-20 on Fashion-MNIST, the grey stand-in for the paper's CIFAR-10 table: l2, stereo
and linear convolutions trained with the same protocol (SGD 0.1, momentum 0.9, weight decay 5e-4,
cosine, batch 128, crop + flip) on a budget that fits a CPU (``--train-limit`` images for
``--epochs`` epochs).

Each metric trains ``pellucid train metric-resnet20-fashion`` into ``--runs-dir/<metric>``;
re-running the same command resumes unfinished runs and re-reads finished ones. Prints ONE JSON
line: per metric the final and best test accuracy, the per-epoch curve, parameters and wall time.

``OMP_NUM_THREADS=1 python -m benchmarks metric_resnet_standin --train-limit 10000 --epochs 6
--runs-dir runs/rn20f-10k``
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # python benchmarks/NAME.py

from benchmarks import _harness as h  # noqa: E402

SUMMARY = "Metric ResNet-20 (l2, stereo, linear convolutions) on Fashion-MNIST, the grey stand-in for CIFAR-10"
EXPECTED_TIME = ("~28 min: 1,651 s of training for --train-limit 10000 --epochs 6 on one thread "
                 "(results/metric_resnet_standin.jsonl); finished runs are re-read, not retrained")

RECIPE = "metric-resnet20-fashion"
PUBLISHED_CIFAR10 = {"l2": 92.84, "stereo": 92.58, "linear": 92.76}  # 200 epochs, mean of 4 seeds


def parser():
    p = h.parser(__name__, __doc__, threads=1, seed=0)
    p.add_argument("--metrics", nargs="+", default=["linear", "l2", "stereo"])
    p.add_argument("--train-limit", type=int, default=10000)
    p.add_argument("--test-limit", type=int, default=0)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--runs-dir", type=Path, required=True)
    return p


def main(argv: list[str] | None = None) -> dict:
    args = h.parse(parser(), argv)
    from pellucid.models import create_model
    from pellucid.train import RECIPES

    entry = RECIPES.get(RECIPE)
    rows = {}
    for metric in args.metrics:
        cfg = entry.config_type(metric=metric, train_limit=args.train_limit, test_limit=args.test_limit,
                                epochs=args.epochs, seed=args.seed)
        out = args.runs_dir / metric
        start = time.perf_counter()
        result = entry.run(cfg, out, resume=(out / "train_state.safetensors").exists(), progress=False)
        history = result["epochs"]
        rows[metric] = {
            "final_test_accuracy": round(100 * history[-1]["test_accuracy"], 2),
            "best_test_accuracy": round(100 * history[-1]["best_test_accuracy"], 2),
            "curve": [round(100 * r["test_accuracy"], 2) for r in history],
            "train_seconds": round(sum(r["train_seconds"] for r in history), 1),
            "seconds_this_call": round(time.perf_counter() - start, 1),
            "parameters": sum(p.numel() for p in create_model(RECIPE, metric=metric).parameters()),
            "published_cifar10": PUBLISHED_CIFAR10.get(metric),
        }
    return {"recipe": RECIPE, "dataset": "fashion-mnist", "train_limit": args.train_limit,
            "test_limit": args.test_limit, "epochs": args.epochs, "seed": args.seed, "metrics": rows}


if __name__ == "__main__":
    h.script(__name__)
