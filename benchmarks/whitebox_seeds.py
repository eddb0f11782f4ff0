"""Reproduce the white-box paper's robustness over several seeds (paper: PGD-40 92.6 %, P@R0.8 ~98 %).

Trains ``whitebox-mnist35`` with the default settings for each seed, evaluates PGD-40 (L-inf eps 0.3,
step 0.1, random start) on the full 1,902-image MNIST 3/5 test set and prints ONE JSON line with
per-seed figures and mean +/- std. ``--attack-seeds N`` also attacks each model with the PGD random
starts of seeds 0..N-1 and reports their spread (the per-seed figures stay those of attack seed 0,
what ``pellucid evaluate`` uses): how much of a figure is the attack's own randomness.

    python benchmarks/whitebox_seeds.py --seeds 314 315 316 --out runs/seeds [--attack-seeds 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import pellucid.models  # noqa: F401
from pellucid.data import load_dataset
from pellucid.models import load_model
from pellucid.report import environment
from pellucid.robust import evaluate_robustness
from pellucid.train import TrainConfig, train_registered_classifier


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values),
            "min": min(values), "max": max(values), "n": len(values)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[314, 315, 316])
    ap.add_argument("--out", default="runs/seeds")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--attack-seeds", type=int, default=1, metavar="N",
                    help="PGD random starts per model: attack seeds 0..N-1 (spread reported)")
    args = ap.parse_args()
    test = load_dataset("mnist", "test", classes=(3, 5))
    keys = ("clean_accuracy", "robust_accuracy", "precision_at_recall_0.8", "reliability_auc")
    runs = []
    for seed in args.seeds:
        out = Path(args.out) / f"seed{seed}"
        t0 = time.perf_counter()
        train_registered_classifier("whitebox-mnist35", TrainConfig(epochs=args.epochs, seed=seed),
                                    out, resume=(out / "train_state.safetensors").is_file(),
                                    progress=False)
        train_s = time.perf_counter() - t0
        model, _ = load_model(out)
        per_attack = [evaluate_robustness(model, test.images, test.labels, attack="pgd", eps=0.3,
                                          step_size=0.1, steps=40, seed=a).summary()
                      for a in range(args.attack_seeds)]
        row = {"seed": seed, "train_seconds": round(train_s, 1), **per_attack[0]}
        if args.attack_seeds > 1:
            row["over_attack_seeds"] = {k: _spread([r[k] for r in per_attack]) for k in keys[1:]}
        runs.append(row)
    agg = {k: {"mean": statistics.mean(r[k] for r in runs),
               "std": statistics.stdev(r[k] for r in runs) if len(runs) > 1 else 0.0} for k in keys}
    print(json.dumps({"benchmark": "whitebox_seeds", "runs": runs, "aggregate": agg,
                      "environment": environment()}))


if __name__ == "__main__":
    main()
