"""``pellucid evaluate DIR``: clean and adversarial accuracy and reliability of a trained model."""

from __future__ import annotations

import argparse
from pathlib import Path

from pellucid.cli._common import add_data_dir, print_json


def add_parser(sub) -> None:
    from pellucid.robust import ATTACKS

    p = sub.add_parser("evaluate", help="robustness and reliability of a trained model",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model_dir", metavar="DIR", help="a model directory written by `pellucid train`")
    p.add_argument("--attack", default="pgd", choices=list(ATTACKS), help="attack")
    p.add_argument("--eps", type=float, default=0.3, help="perturbation budget")
    p.add_argument("--norm", default="linf", choices=["linf", "l2"], help="threat model (PGD)")
    p.add_argument("--steps", type=int, default=40, help="attack iterations (PGD)")
    p.add_argument("--step-size", type=float, default=None, help="PGD step (default eps / 3)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N test images only")
    p.add_argument("--seed", type=int, default=0, help="seed of the attack's random start")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--rejection", action="store_true",
                   help="also the epsilon-neuron rejection figures (models that can reject, e.g. "
                        "dictionary-mlp; attack directions from --attack, alpha in {1, 3, 9})")
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


def run(args: argparse.Namespace) -> int:
    from pellucid.models import load_model
    from pellucid.robust import evaluate_robustness

    model, config = load_model(Path(args.model_dir))
    ds = load_test_set(config, args.data_dir, args.limit)
    kwargs = {"steps": args.steps, "step_size": args.step_size, "norm": args.norm,
              "progress": True} if args.attack == "pgd" else {}
    result = evaluate_robustness(model, ds.images, ds.labels, attack=args.attack, eps=args.eps,
                                 seed=args.seed, **kwargs)
    summary = {"model": config["model"], "model_dir": str(args.model_dir), **result.summary(),
               **({"steps": args.steps, "norm": args.norm} if args.attack == "pgd" else {})}
    if args.rejection:
        from pellucid.robust.rejection import rejection_report

        attack_kwargs = {"eps": args.eps, **kwargs}
        summary["rejection"] = rejection_report(model, ds.images, ds.labels, attack=args.attack,
                                                seed=args.seed, attack_kwargs=attack_kwargs)
    if args.json:
        print_json(summary)
    else:
        print(f"{config['model']} on {summary['n']} test images, {args.attack} eps={args.eps}:")
        for key in ("clean_accuracy", "robust_accuracy", "precision_at_recall_0.8", "reliability_auc"):
            print(f"  {key:<24} {summary[key] * 100:7.2f} %")
        print(f"  {'seconds':<24} {summary['seconds']:7.1f}")
        if args.rejection:
            rej = summary["rejection"]
            print(f"  rejection at trained epsilon {rej['trained_epsilon']:.4g}: clean "
                  f"{rej['clean_rejection_rate'] * 100:.2f} %, uniform noise "
                  f"{rej['noise_rejection_rate'] * 100:.2f} %")
            for alpha, r in rej["search"]["alphas"].items():
                print(f"  alpha={alpha}: best epsilon {r['epsilon']:.4g}, measure {r['measure']:.4f}, "
                      f"adversarial rejected {r['adversarial_rejection_rate'] * 100:.2f} %, clean "
                      f"rejected {r['clean_rejection_rate'] * 100:.2f} %")
    return 0
