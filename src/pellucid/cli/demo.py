"""``pellucid demo``: train the white-box model with the paper's settings, attack it, report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pellucid.cli._common import DefaultsHelpFormatter, add_data_dir, print_json


# One line for `pellucid --help` (which imports no subcommand's dependencies).
SUMMARY = "train + PGD-40 evaluation + HTML report of the white-box model"


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help=SUMMARY,
                       formatter_class=DefaultsHelpFormatter)
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
    from pellucid.report.records import save_record
    from pellucid.report.run import run_report
    from pellucid.robust import evaluate_robustness
    from pellucid.robust.checks import evaluation_checks
    from pellucid.train import TrainConfig, train_registered_classifier
    from pellucid.train.checkpointing import STATE_FILE

    out = Path(args.out)
    t0 = time.perf_counter()
    resume = (out / STATE_FILE).is_file()  # re-running the demo continues / reuses its run
    print(f"[1/4] training whitebox-mnist35 -> {out}" + (" (resuming)" if resume else ""), flush=True)
    train_registered_classifier("whitebox-mnist35", TrainConfig(epochs=args.epochs, seed=args.seed),
                                out, resume=resume, data_dir=args.data_dir)
    train_seconds = time.perf_counter() - t0
    model, config = load_model(out)
    test = load_test_set(config, args.data_dir, args.limit)
    print(f"[2/4] PGD-40 (L-inf eps 0.3, step 0.1) on {len(test)} test images", flush=True)
    result = evaluate_robustness(model, test.images, test.labels, attack="pgd", eps=0.3,
                                 step_size=0.1, steps=40, seed=0, progress=True)
    print("[3/4] gradient-masking checks and accuracy vs eps (first 500 images)", flush=True)
    checks, curve = evaluation_checks(model, result, test.images, test.labels, limit=500, warn=False)
    summary = {"model": config["model"], **result.summary(), "steps": 40,
               "train_seconds": round(train_seconds, 1)}
    save_record(out, summary, result, eps_points={"points": curve, "n": min(500, len(test))})
    print("[4/4] figures and report", flush=True)
    report = run_report(out, model, test, result)
    summary["report"] = str(report)
    if args.json:
        print_json(summary)
    else:
        print(f"clean accuracy {summary['clean_accuracy']:.2%}, PGD-40 accuracy "
              f"{summary['robust_accuracy']:.2%}, precision at 80% recall "
              f"{summary['precision_at_recall_0.8']:.2%}")
        for c in checks:
            print(f"check {c.name:<14} {({True: 'pass', False: 'FAIL', None: 'skip'})[c.passed]}  "
                  f"{c.detail}")
        print(f"report: {report}")
    return 0
