"""Noisy centre search on Fashion-MNIST: choose a dictionary's centres without backprop.

Start from H random training images as centres (one-hot values); each round add K random training
images as centres, score every centre by significance_j = sum over the whole train set of
(a_j dL/da_j)^2 and prune the K least significant (``pellucid.train.centre_search``). Activations
(``--similarity``): softmax(-d), the dictionary's epsilon-softmax without the epsilon neuron
(default), or the data-init table's min-exp similarity exp(-2 (d - min d) / std d); logits a V;
inputs in [-1, 1]. Defaults: the reference's H = 100, K = 30, 30 rounds.

Prints ONE JSON line: the test accuracy (all 10,000 test images) after every round (round 0 =
the random initialisation), and the wall time.

    nice -n 15 .venv/bin/python benchmarks/noisy_centre_search.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from pellucid.data import load_dataset
from pellucid.train.centre_search import noisy_centre_search


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("--add", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--similarity", choices=("softmax", "min-exp"), default="softmax")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    x, tx = train.images.flatten(1) * 2 - 1, test.images.flatten(1) * 2 - 1  # (N, 784) in [-1, 1]
    runs = {}
    for seed in args.seeds:
        t0 = time.perf_counter()
        out = noisy_centre_search(x, train.labels, tx, test.labels, hidden=args.hidden, add=args.add,
                                  rounds=args.rounds, similarity=args.similarity, seed=seed)
        runs[str(seed)] = {"test_accuracy": [round(100 * a, 2) for a in out["test_accuracy"]],
                           "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps({"benchmark": "noisy_centre_search", "dataset": "fashion-mnist", "hidden": args.hidden,
                      "add": args.add, "rounds": args.rounds, "similarity": args.similarity,
                      "scored_on": len(x), "runs": runs,
                      "threads": args.threads, "torch": torch.__version__,
                      "python": platform.python_version(), "device": "cpu"}))


if __name__ == "__main__":
    main()
