"""``pellucid evaluate DIR``: clean and adversarial accuracy and reliability of a trained model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pellucid.cli._common import DefaultsHelpFormatter, add_data_dir, print_json


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
    p.add_argument("--eps", type=float, default=0.3, help="perturbation budget")
    p.add_argument("--norm", default="linf", choices=["linf", "l2"], help="threat model")
    p.add_argument("--steps", type=int, default=None,
                   help="iterations (default: " + ", ".join(f"{k} {v}" for k, v in _DEFAULT_STEPS.items()) + ")")
    p.add_argument("--step-size", type=float, default=None, help="PGD/APGD step (default eps / 3)")
    p.add_argument("--budget", default="standard", choices=sorted(BUDGETS),
                   help="AutoAttack budget: standard = 1 restart per attack; art-default = ART's "
                        "5 restarts (5 x 5000 Square queries)")
    p.add_argument("--restarts", type=int, default=None, help="restarts of apgd-*/square (default 1)")
    p.add_argument("--queries", type=int, default=None, help="Square queries (default 5000)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N test images only")
    p.add_argument("--seed", type=int, default=0, help="seed of the attack's randomness")
    p.add_argument("--checks", action=argparse.BooleanOptionalAction, default=True,
                   help="gradient-masking checks (always on for autoattack)")
    p.add_argument("--check-limit", type=int, default=500, metavar="N",
                   help="images used by the unbounded-PGD and accuracy-vs-eps checks (0: all)")
    p.add_argument("--report", action="store_true",
                   help="(re)write DIR/report.html with every evaluation recorded in DIR")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--rejection", action="store_true",
                   help="also the epsilon-neuron rejection figures (models that can reject, e.g. "
                        "dictionary-mlp; attack directions from --attack, alpha in {1, 3, 9})")
    p.add_argument("--min-noise-rejection", type=float, default=None, metavar="P",
                   help="with --rejection: the epsilon search only considers epsilons that reject "
                        "at least this fraction of uniform-noise inputs (default: the paper's "
                        "protocol, measure only)")
    add_data_dir(p)
    p.set_defaults(func=run)


def load_test_set(config: dict, data_dir: str | None, limit: int | None):
    """The test split a model directory was trained for, optionally its first ``limit`` images."""
    from pellucid.data import load_dataset
    from pellucid.errors import InvalidInputError

    data = config.get("data") or {}
    if "dataset" not in data:
        raise InvalidInputError("the model directory's config names no dataset to evaluate on")
    ds = load_dataset(data["dataset"], "test", classes=data.get("classes"), data_dir=data_dir)
    if limit is not None:
        if limit < 1:
            raise InvalidInputError(f"--limit must be >= 1, got {limit}")
        ds = ds.subset(slice(0, limit))
    return ds


def attack_kwargs(args: argparse.Namespace) -> dict:
    """The options that apply to ``args.attack`` (others are rejected, not silently ignored)."""
    from pellucid.errors import InvalidInputError

    kw: dict = {"progress": True}
    if args.steps is not None and args.attack not in _DEFAULT_STEPS:
        raise InvalidInputError(f"--steps does not apply to {args.attack}")
    if args.attack in _DEFAULT_STEPS:
        kw["steps"] = args.steps or _DEFAULT_STEPS[args.attack]
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
        kw["log"] = lambda msg: print(msg, file=sys.stderr, flush=True)
    return kw


def run(args: argparse.Namespace) -> int:
    from pellucid.models import load_model
    from pellucid.report.records import save_record
    from pellucid.robust import evaluate_robustness
    from pellucid.robust.checks import evaluation_checks
    from pellucid.robust.evaluate import minimal_perturbations

    if args.min_noise_rejection is not None:
        from pellucid.errors import InvalidInputError

        if not args.rejection:
            raise InvalidInputError("--min-noise-rejection applies to --rejection; add --rejection")
        if not 0 <= args.min_noise_rejection <= 1:
            raise InvalidInputError(f"--min-noise-rejection must be in [0, 1], got {args.min_noise_rejection}")
    model_dir = Path(args.model_dir)
    model, config = load_model(model_dir)
    ds = load_test_set(config, args.data_dir, args.limit)
    kwargs = attack_kwargs(args)
    result = evaluate_robustness(model, ds.images, ds.labels, attack=args.attack, eps=args.eps,
                                 norm=args.norm, seed=args.seed, **kwargs)
    summary = {"model": config["model"], "model_dir": str(args.model_dir), **result.summary()}
    if "steps" in kwargs:
        summary["steps"] = kwargs["steps"]
    minimal = points = None
    if args.attack in ("boundary", "deepfool"):
        minimal = minimal_perturbations(model, ds.images, result.adversarial, ds.labels)
        summary["minimal_perturbation"] = {k: v for k, v in minimal.items() if k not in ("l2", "linf")}
        _save_examples(model_dir, model, ds, result, minimal)
    if args.checks or args.attack == "autoattack":
        checks, curve = evaluation_checks(model, result, ds.images, ds.labels,
                                          limit=args.check_limit or None, seed=args.seed,
                                          warn=False)
        result.checks = checks
        summary["checks"] = {c.name: c.summary() for c in checks}
        points = {"points": curve, "n": min(len(ds), args.check_limit or len(ds))}
        for c in checks:
            if c.passed is False:
                print(f"WARNING: gradient-masking check '{c.name}' failed: {c.detail}",
                      file=sys.stderr)
    save_record(model_dir, summary, result, eps_points=points, minimal=minimal)
    if args.rejection:
        from pellucid.robust.rejection import rejection_report

        summary["rejection"] = rejection_report(model, ds.images, ds.labels, attack=args.attack,
                                                seed=args.seed,
                                                attack_kwargs={"eps": args.eps, **kwargs},
                                                min_noise_rejection=args.min_noise_rejection)
    if args.report:
        from pellucid.report.run import run_report

        summary["report"] = str(run_report(model_dir, model, ds, result))
    if args.json:
        print_json(summary)
    else:
        _print_summary(summary, args)
    return 0


def _save_examples(model_dir: Path, model, ds, result, minimal: dict) -> None:
    from pellucid.viz.robust import plot_minimal_perturbations

    plot_minimal_perturbations(model, ds.images, result.adversarial, ds.labels, list(ds.classes),
                               model_dir / f"{result.attack}_examples.png",
                               f"{result.attack}: minimal perturbations that flip the prediction "
                               f"(median L2 {minimal['median_l2'] or float('nan'):.2f}, L-inf "
                               f"{minimal['median_linf'] or float('nan'):.2f})")


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
