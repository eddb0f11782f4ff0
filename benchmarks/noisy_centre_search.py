"""Noisy centre search on Fashion-MNIST: choose a dictionary's centres without backprop.

Start from H random training images as centres (one-hot values); each round add K random training
images as centres, score every centre by significance_j = sum over the whole train set of
(a_j dL/da_j)^2 and prune the K least significant (``pellucid.train.centre_search``). Activations
(``--similarity``): softmax(-d), the dictionary's epsilon-softmax without the epsilon neuron
(default), or the data-init table's min-exp similarity exp(-2 (d - min d) / std d); logits a V;
inputs in [-1, 1]. Defaults: the reference's H = 100, K = 30, 30 rounds.

Prints ONE JSON line: the test accuracy (all 10,000 test images) after every round (round 0 =
the random initialisation), and the wall time.

    nice -n 15 .venv/bin/python -m benchmarks noisy_centre_search [--seeds 0 1 2]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # python benchmarks/NAME.py

from benchmarks import _harness as h  # noqa: E402

SUMMARY = "Noisy centre search on Fashion-MNIST: choose a dictionary's centres without backprop"
EXPECTED_TIME = "~6 s per seed on 2 threads, plus loading Fashion-MNIST (results/noisy_centre_search.jsonl)"


def parser():
    p = h.parser(__name__, __doc__, threads=2)
    p.add_argument("--hidden", type=int, default=100)
    p.add_argument("--add", type=int, default=30)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--similarity", choices=("softmax", "min-exp"), default="softmax")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = h.parse(parser(), argv)
    from pellucid.data import load_dataset
    from pellucid.train.centre_search import noisy_centre_search

    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    x, tx = train.images.flatten(1) * 2 - 1, test.images.flatten(1) * 2 - 1  # (N, 784) in [-1, 1]
    runs = {}
    for seed in args.seeds:
        t0 = time.perf_counter()
        out = noisy_centre_search(x, train.labels, tx, test.labels, hidden=args.hidden, add=args.add,
                                  rounds=args.rounds, similarity=args.similarity, seed=seed)
        runs[str(seed)] = {"test_accuracy": [round(100 * a, 2) for a in out["test_accuracy"]],
                           "seconds": h.seconds_since(t0)}
    return {"dataset": "fashion-mnist", "hidden": args.hidden, "add": args.add, "rounds": args.rounds,
            "similarity": args.similarity, "scored_on": len(x), "runs": runs, "threads": args.threads,
            "device": "cpu"}


if __name__ == "__main__":
    h.script(__name__)
