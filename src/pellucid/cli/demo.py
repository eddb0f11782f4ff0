"""``pellucid demo``: train the white-box model with the paper's settings, attack it, report."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pellucid.cli._common import add_data_dir, print_json


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="train + PGD-40 evaluation + HTML report of the white-box model",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="run directory")
    p.add_argument("--epochs", type=int, default=15, help="training epochs")
    p.add_argument("--seed", type=int, default=314, help="training seed")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="evaluate on N test images")
    p.add_argument("--json", action="store_true", help="print one JSON summary as the last line")
    add_data_dir(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pellucid.cli.evaluate import load_test_set
    from pellucid.models import load_model
    from pellucid.report.whitebox import whitebox_report
    from pellucid.robust import evaluate_robustness
    from pellucid.train import TrainConfig, train_registered_classifier
    from pellucid.train.checkpointing import STATE_FILE

    out = Path(args.out)
    t0 = time.perf_counter()
    resume = (out / STATE_FILE).is_file()  # re-running the demo continues / reuses its run
    print(f"[1/3] training whitebox-mnist35 -> {out}" + (" (resuming)" if resume else ""), flush=True)
    train_registered_classifier("whitebox-mnist35", TrainConfig(epochs=args.epochs, seed=args.seed),
                                out, resume=resume, data_dir=args.data_dir)
    train_seconds = time.perf_counter() - t0
    model, config = load_model(out)
    test = load_test_set(config, args.data_dir, args.limit)
    print(f"[2/3] PGD-40 (L-inf eps 0.3, step 0.1) on {len(test)} test images", flush=True)
    result = evaluate_robustness(model, test.images, test.labels, attack="pgd", eps=0.3,
                                 step_size=0.1, steps=40, seed=0, progress=True)
    summary = {**result.summary(), "train_seconds": round(train_seconds, 1)}
    (out / "evaluation.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("[3/3] figures and report", flush=True)
    report = whitebox_report(out, model, test, result)
    summary["report"] = str(report)
    if args.json:
        print_json(summary)
    else:
        print(f"clean accuracy {summary['clean_accuracy']:.2%}, PGD-40 accuracy "
              f"{summary['robust_accuracy']:.2%}, precision at 80% recall "
              f"{summary['precision_at_recall_0.8']:.2%}\nreport: {report}")
    return 0
