"""Data-initialised centres, NO training: Metric as Transform's data-initialisation table.

For each seed, H random training images become the centres with one-hot values; a test image is
classified by ``argmax_k sum_j a_j onehot(y_j)_k`` with the min-exp similarity
``a = exp(-2 (d - min_j d) / std_j d)``, ``d`` the Euclidean distances to the centres (inputs in
[-1, 1]; the similarity is invariant to that affine rescaling). No output bias (the original left a
random bias in; see metric-as-transform.md, known defects).

Prints ONE JSON line. ``nice -n 15 .venv/bin/python benchmarks/metric_data_init.py``
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch

from pellucid.data import load_dataset
from pellucid.nn.distance import lp_distance
from pellucid.nn.similarity import min_exp_similarity

PUBLISHED = {"mnist": {10: 36.48, 50: 60.76, 200: 76.40, 1000: 85.61, 5000: 88.56, 20000: 89.43},
             "fashion-mnist": {10: 32.75, 50: 58.08, 200: 67.75, 1000: 72.60, 5000: 73.95, 20000: 74.43}}


@torch.no_grad()
def data_init_accuracy(train, test, hidden: int, seed: int, chunk: int = 1000,
                       random_bias: bool = False) -> float:
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(train), generator=gen)[:hidden]
    # --random-bias: the original's untouched output bias of nn.Linear(H, 10), U(-1/sqrt(H), 1/sqrt(H))
    bias = (torch.rand(10, generator=gen) * 2 - 1) / hidden ** 0.5 if random_bias else torch.zeros(10)
    centres = train.images[rows].flatten(1) * 2 - 1  # (H, D)
    values = torch.nn.functional.one_hot(train.labels[rows], 10).float()  # (H, K)
    correct = 0
    for x, y in zip(test.images.split(chunk), test.labels.split(chunk)):
        a = min_exp_similarity(lp_distance(x.flatten(1) * 2 - 1, centres, 2.0), k=2.0)  # (B, H)
        correct += int(((a @ values + bias).argmax(1) == y).sum())
    return 100.0 * correct / len(test)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--hidden", type=int, nargs="+", default=[10, 50, 200, 1000, 5000, 20000])
    ap.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--random-bias", action="store_true",
                    help="add the original notebook's random output bias (to test that it explains the gap)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    cells = {}
    for name in args.datasets:
        train, test = load_dataset(name, "train"), load_dataset(name, "test")
        for h in args.hidden:
            accs = torch.tensor([data_init_accuracy(train, test, h, s, random_bias=args.random_bias) for s in range(args.seeds)])
            pub = PUBLISHED[name][h]
            mean, std = float(accs.mean()), float(accs.std()) if len(accs) > 1 else 0.0
            cells[f"{name}/H={h}"] = {"mean": round(mean, 2), "std": round(std, 2),
                                      "published": pub, "diff": round(mean - pub, 2),
                                      "stderr": round(std / math.sqrt(len(accs)), 2)}
    print(json.dumps({"benchmark": "metric_data_init", "seeds": args.seeds, "random_bias": args.random_bias, "cells": cells,
                      "seconds": round(time.perf_counter() - t0, 1), "torch": torch.__version__,
                      "python": platform.python_version(), "threads": args.threads, "device": "cpu"}))


if __name__ == "__main__":
    main()
