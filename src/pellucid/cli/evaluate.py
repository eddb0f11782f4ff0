"""``pellucid evaluate DIR``: clean and adversarial accuracy and reliability of a trained model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pellucid.cli._common import DefaultsHelpFormatter, add_data_dir, checked, print_json


# per-attack defaults of --steps (iterations); attacks not listed take no --steps
_DEFAULT_STEPS = {"pgd": 40, "apgd-ce": 100, "apgd-dlr": 100, "deepfool": 100, "boundary": 1000}


# One line for `pellucid --help` (which imports no subcommand's dependencies).
SUMMARY = "robustness and reliability of a trained model"


def add_parser(sub) -> None:
    from pellucid.robust import ATTACKS, BUDGETS

    p = sub.add_parser("evaluate", help=SUMMARY,
                       formatter_class=DefaultsHelpFormatter,
                       description="Attack a trained model's test set with the true labels, report "
                                   "clean and robust accuracy, reliability and gradient-masking "
                                   "checks, and record the result in DIR/evaluations/.")
    p.add_argument("model_dir", metavar="DIR", help="a model directory written by `pellucid train`")
    p.add_argument("--attack", default="pgd", choices=list(ATTACKS),
                   help="; ".join(f"{e.name}: {e.summary}" for e in ATTACKS.entries()))
    p.add_argument("--eps", type=checked(float, min=0), default=0.3, help="perturbation budget")
    p.add_argument("--norm", default="linf", choices=["linf", "l2"], help="threat model")
    p.add_argument("--steps", type=checked(int, min=1), default=None,
                   help="iterations (default: " + ", ".join(f"{k} {v}" for k, v in _DEFAULT_STEPS.items()) + ")")
    p.add_argument("--step-size", type=checked(float, above=0), default=None,
                   help="PGD/APGD step (default eps / 3)")
    p.add_argument("--budget", default="standard", choices=sorted(BUDGETS),
                   help="AutoAttack budget: standard = 1 restart per attack; art-default = ART's "
                        "5 restarts (5 x 5000 Square queries)")
    p.add_argument("--restarts", type=checked(int, min=1), default=None,
                   help="restarts of apgd-*/square (default 1)")
    p.add_argument("--queries", type=checked(int, min=1), default=None, help="Square queries (default 5000)")
    p.add_argument("--limit", type=checked(int, min=1), default=None, metavar="N",
                   help="first N test images only")
    p.add_argument("--seed", type=checked(int, min=0, max=2**63 - 1), default=0,
                   help="seed of the attack's randomness")
    p.add_argument("--checks", action=argparse.BooleanOptionalAction, default=True,
                   help="gradient-masking checks (always on for autoattack)")
    p.add_argument("--check-limit", type=checked(int, min=0), default=500, metavar="N",
                   help="images used by the unbounded-PGD and accuracy-vs-eps checks (0: all)")
    p.add_argument("--report", action="store_true",
                   help="(re)write DIR/report.html with every evaluation recorded in DIR")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--rejection", action="store_true",
                   help="also the epsilon-neuron rejection figures (models that can reject, e.g. "
                        "dictionary-mlp; attack directions from --attack, alpha in {1, 3, 9})")
    p.add_argument("--min-noise-rejection", type=checked(float, min=0, max=1), default=None, metavar="P",
                   help="with --rejection: the epsilon search only considers epsilons that reject "
                        "at least this fraction of uniform-noise inputs (default: the paper's "
                        "protocol, measure only)")
    add_data_dir(p)
    p.set_defaults(func=run)


def attack_options(args: argparse.Namespace) -> dict:
    """The options that apply to ``args.attack`` (others are rejected, not silently ignored)."""
    from pellucid.errors import InvalidInputError

    kw: dict = {}
    if args.steps is not None and args.attack not in _DEFAULT_STEPS:
        raise InvalidInputError(f"--steps does not apply to {args.attack}")
    if args.attack in _DEFAULT_STEPS:
        kw["steps"] = args.steps if args.steps is not None else _DEFAULT_STEPS[args.attack]
    if args.step_size is not None:
        kw["step_size"] = args.step_size
    if args.restarts is not None:
        if args.attack not in ("apgd-ce", "apgd-dlr", "square", "square-native"):
            raise InvalidInputError(f"--restarts does not apply to {args.attack}")
        kw["restarts"] = args.restarts
    if args.queries is not None:
        if args.attack not in ("square", "square-native"):
            raise InvalidInputError("--queries applies to square and square-native only")
        kw["queries"] = args.queries
    if args.attack == "autoattack":
        kw["budget"] = args.budget
    return kw


def run(args: argparse.Namespace) -> int:
    from pellucid._io import check_writable_dir
    from pellucid.errors import InvalidInputError
    from pellucid.models import read_config
    from pellucid.report.evaluation import evaluate_run

    if args.min_noise_rejection is not None and not args.rejection:
        raise InvalidInputError("--min-noise-rejection applies to --rejection; add --rejection")
    options = attack_options(args)
    read_config(args.model_dir)  # a missing or broken model directory fails before any work
    check_writable_dir(args.model_dir, "model directory")  # the record is written there at the end
    if args.report:
        from pellucid.report.html import check_report_writable

        check_report_writable(Path(args.model_dir) / "report.html")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    done = evaluate_run(args.model_dir, attack=args.attack, eps=args.eps, norm=args.norm,
                        seed=args.seed, options=options, limit=args.limit, checks=args.checks,
                        check_limit=args.check_limit or None, data_dir=args.data_dir,
                        report=args.report and not args.rejection, log=log)
    summary = done.summary
    if args.rejection:
        from pellucid._io import RunLock
        from pellucid.robust.rejection import rejection_report

        summary["rejection"] = rejection_report(done.model, done.test.images, done.test.labels,
                                                attack=args.attack, seed=args.seed,
                                                attack_kwargs={"eps": args.eps, "progress": True, **options},
                                                min_noise_rejection=args.min_noise_rejection)
        if args.report:
            from pellucid.report.run import run_report

            with RunLock(args.model_dir):
                summary["report"] = str(run_report(args.model_dir, done.model, done.test, done.result))
    if args.json:
        print_json(summary)
    else:
        _print_summary(summary, args)
    return 0


def _print_summary(summary: dict, args: argparse.Namespace) -> None:
    print(f"{summary['model']} on {summary['n']} test images, {args.attack} {args.norm} "
          f"eps={args.eps}:")
    ci = summary.get("precision_at_recall_0.8_ci95")
    for key in ("clean_accuracy", "robust_accuracy", "precision_at_recall_0.8", "reliability_auc"):
        value = summary[key]
        text = "      -" if value is None or value != value else f"{value * 100:7.2f} %"
        if key == "precision_at_recall_0.8" and ci and None not in ci and ci[0] == ci[0]:
            text += f"  (95 % bootstrap interval {ci[0] * 100:.2f} to {ci[1] * 100:.2f} %)"
        print(f"  {key:<24} {text}")
    print(f"  {'seconds':<24} {summary['seconds']:7.1f}")
    for st in summary.get("stages", []) if len(summary.get("stages", [])) > 1 else []:
        print(f"    {st['attack']:<10} broke {st['broken']:5d} of {st['attacked']:5d} in "
              f"{st['seconds']:8.1f} s")
    if "minimal_perturbation" in summary:
        mp = summary["minimal_perturbation"]
        print(f"  minimal perturbations: {mp['flipped']} flipped, median L2 {mp['median_l2']}, "
              f"median L-inf {mp['median_linf']}")
    for name, c in summary.get("checks", {}).items():
        status = {True: "pass", False: "FAIL", None: "skip"}[c["passed"]]
        print(f"  check {name:<14} {status}  {c['detail']}")
    if args.rejection:
        rej = summary["rejection"]
        print(f"  rejection at trained epsilon {rej['trained_epsilon']:.4g}: clean "
              f"{rej['clean_rejection_rate'] * 100:.2f} %, uniform noise "
              f"{rej['noise_rejection_rate'] * 100:.2f} %")
        for alpha, r in rej["search"]["alphas"].items():
            print(f"  alpha={alpha}: best epsilon {r['epsilon']:.4g}, measure {r['measure']:.4f}, "
                  f"adversarial rejected {r['adversarial_rejection_rate'] * 100:.2f} %, clean "
                  f"rejected {r['clean_rejection_rate'] * 100:.2f} %, noise rejected "
                  f"{r['noise_rejection_rate'] * 100:.2f} %"
                  + ("" if r["noise_constraint_met"] else " (below --min-noise-rejection)"))
    if "report" in summary:
        print(f"  report: {summary['report']}")
