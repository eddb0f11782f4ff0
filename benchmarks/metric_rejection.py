"""Adversarial rejection with the epsilon-softmax dictionary MLP on Fashion-MNIST.

For each H: train a dictionary MLP (Adam lr 0.01, data-initialised keys, key learning rate x
``--centre-lr-scale``, running-mean epsilon), then for each attack keep only its direction,
step a fixed L2 length alpha in [-1, 1] pixel space, clip to [-b, b] (b = 1), and search epsilon for the
minimum measure = (failed + x_rejected) / count among the epsilons that reject at least
``--min-noise-rejection`` (default 99 %) of 1,000 uniform-noise images (the measure alone ignores
noise). Also: uniform-noise rejection rate at the trained and at the best epsilon, and the
selective-accuracy-vs-coverage area.

Prints ONE JSON line. ``nice -n 15 .venv/bin/python benchmarks/metric_rejection.py``
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from pellucid.data import load_dataset
from pellucid.robust.rejection import rejection_report
from pellucid.models import load_model
from pellucid.train.checkpointing import STATE_FILE
from pellucid.train.metric_recipes import DictionaryMLPConfig, train_dictionary_mlp

ATTACKS = {"fgsm": ("fgsm", {"eps": 0.3}),
           "linf-pgd": ("pgd", {"eps": 0.3, "steps": 20, "step_size": 0.03, "norm": "linf"}),
           "l2-pgd": ("pgd", {"eps": 3.0, "steps": 20, "step_size": 0.3, "norm": "l2"})}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, nargs="+", default=[100, 500])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--centre-lr-scale", type=float, default=0.01)
    ap.add_argument("--n", type=int, default=1000, help="test images attacked")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs-dir", type=Path, default=None, metavar="DIR",
                    help="keep each trained model in DIR (checkpointed every epoch; re-running resumes)")
    ap.add_argument("--min-noise-rejection", type=float, default=0.99, metavar="P",
                    help="epsilon search: only epsilons rejecting >= P of uniform noise (negative: "
                         "none, the paper's measure-only protocol)")
    args = ap.parse_args()
    if args.min_noise_rejection < 0:
        args.min_noise_rejection = None
    torch.set_num_threads(args.threads)
    test = load_dataset("fashion-mnist", "test")
    x, y = test.images[:args.n], test.labels[:args.n]
    t0 = time.perf_counter()
    models = {}
    for hidden in args.hidden:
        cfg = DictionaryMLPConfig(hidden=hidden, epochs=args.epochs, data_init=True,
                                  centre_lr_scale=args.centre_lr_scale)
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:  # without --runs-dir: a throw-away run directory
            out = (args.runs_dir or Path(tmp)) / f"dictionary_{hidden}_e{args.epochs}_lr{args.centre_lr_scale:g}"
            hist = train_dictionary_mlp(cfg, out, resume=(out / STATE_FILE).is_file(), progress=False)["epochs"]
            model = load_model(out)[0]
        model.eval()
        row = {"test_accuracy": hist[-1]["test_accuracy"], "train_seconds": round(time.perf_counter() - t, 1),
               "attacks": {}}
        for label, (attack, kwargs) in ATTACKS.items():
            rep = rejection_report(model, x, y, attack=attack, attack_kwargs=kwargs, alphas=(1.0, 3.0, 9.0),
                                   min_noise_rejection=args.min_noise_rejection)
            row["attacks"][label] = {k: v for k, v in rep.items() if k != "search"} | {
                "alphas": rep["search"]["alphas"], "seconds": rep["search"]["seconds"]}
        models[f"H={hidden}"] = row
        print(json.dumps({f"H={hidden}": row}), file=__import__("sys").stderr, flush=True)
    print(json.dumps({"benchmark": "metric_rejection", "epochs": args.epochs, "n": args.n,
                      "centre_lr_scale": args.centre_lr_scale, "bound": 1.0,
                      "min_noise_rejection": args.min_noise_rejection, "models": models,
                      "seconds": round(time.perf_counter() - t0, 1), "threads": args.threads,
                      "torch": torch.__version__, "python": platform.python_version(), "device": "cpu"}))


if __name__ == "__main__":
    main()
