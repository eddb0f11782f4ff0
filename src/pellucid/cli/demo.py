"""``pellucid demo``: train the white-box model with the paper's settings, attack it, report."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from pellucid.cli._common import DefaultsHelpFormatter, add_data_dir, add_device_option, checked, print_json


# One line for `pellucid --help` (which imports no subcommand's dependencies).
SUMMARY = "train + PGD-40 evaluation + HTML report of the white-box model"


def add_parser(sub, argv: Sequence[str] = ()) -> None:
    from pellucid.robust.catalogue import CHUNK_SIZE  # no torch: --help stays quick

    p = sub.add_parser("demo", help=SUMMARY,
                       formatter_class=DefaultsHelpFormatter,
                       description="Train the white-box network (or continue / reuse the demo run "
                                   "in --out, which must have the same settings), evaluate it with "
                                   "PGD-40 and the gradient-masking checks, write the report.")
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="run directory")
    p.add_argument("--epochs", type=checked(int, min=1), default=15, help="training epochs")
    p.add_argument("--seed", type=checked(int, min=0, max=2**63 - 1), default=314, help="training seed")
    p.add_argument("--limit", type=checked(int, min=1), default=None, metavar="N",
                   help="evaluate on N test images")
    p.add_argument("--chunk-size", type=checked(int, min=1), default=CHUNK_SIZE, metavar="N",
                   help="images attacked together (see pellucid evaluate --help)")
    p.add_argument("--json", action="store_true", help="print one JSON summary as the last line")
    add_device_option(p)
    add_data_dir(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pellucid._io import check_writable_dir
    from pellucid.errors import Stopped
    from pellucid.distributed import start_job
    from pellucid.report.evaluation import evaluate_run
    from pellucid.report.html import check_report_writable
    from pellucid.train import TrainConfig, train_registered_classifier
    from pellucid.train.checkpointing import STATE_FILE, check_run_dir
    from pellucid.train.trainer import training_job

    out = Path(args.out)
    cfg = TrainConfig(epochs=args.epochs, seed=args.seed)
    check_writable_dir(out, "--out")
    resume = (out / STATE_FILE).is_file()  # re-running the demo continues / reuses its run
    check_run_dir(out, resume)
    check_report_writable(out / "report.html")
    t0 = time.perf_counter()
    with start_job(args.device) as job, training_job(job):
        if job.world_size > 1:  # enough images for every process, checked before training
            from pellucid.data import load_dataset
            from pellucid.robust.evaluate import check_processes

            n = len(load_dataset("mnist", "test", classes=(3, 5), data_dir=args.data_dir))
            check_processes(job.world_size, min(n, args.limit or n), args.chunk_size)
        say = print if job.is_main else (lambda *a, **k: None)  # under torchrun process 0 reports
        say(f"[1/4] training whitebox-mnist35 -> {out}" + (" (resuming)" if resume else ""), flush=True)
        try:
            train_registered_classifier("whitebox-mnist35", cfg, out, resume=resume,
                                        progress=job.is_main, data_dir=args.data_dir)
        except Stopped as stopped:
            raise stopped.continued_by("the same command continues it") from None
        train_seconds = time.perf_counter() - t0
        stage = iter(("[2/4]", "[3/4]", "[4/4]"))  # evaluate_run logs: attack, checks, report
        done = evaluate_run(out, attack="pgd", eps=0.3, seed=0, options={"step_size": 0.1, "steps": 40},
                            limit=args.limit, checks=True, check_limit=500, data_dir=args.data_dir,
                            report=True, log=lambda msg: say(next(stage, ""), msg, flush=True),
                            device=job.device, chunk_size=args.chunk_size, job=job)
    if done is None:  # another process of the job reports
        return 0
    summary = {**done.summary, "train_seconds": round(train_seconds, 1)}
    if args.json:
        print_json(summary)
    else:
        print(f"clean accuracy {summary['clean_accuracy']:.2%}, PGD-40 accuracy "
              f"{summary['robust_accuracy']:.2%}, precision at 80% recall "
              f"{summary['precision_at_recall_0.8']:.2%}")
        for c in done.checks:
            print(f"check {c.name:<14} {({True: 'pass', False: 'FAIL', None: 'skip'})[c.passed]}  "
                  f"{c.detail}")
        print(f"report: {summary['report']}")
    return 0
