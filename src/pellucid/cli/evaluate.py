"""``pellucid evaluate DIR``: clean and adversarial accuracy and reliability of a trained model."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pellucid.cli._common import (DefaultsHelpFormatter, add_data_dir, add_device_option, add_field_option,
                                  checked, print_json)


# One line for `pellucid --help` (which imports no subcommand's dependencies).
SUMMARY = "robustness and reliability of a trained model"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _attacks() -> list[tuple[str, str, type]]:
    """``(name, summary, options dataclass)`` of every registered attack, in registration order,
    without importing the attacks (or torch): see :mod:`pellucid.robust.catalogue`."""
    from pellucid.robust.catalogue import ATTACKS

    return [(d.name, d.summary, d.info) for d in ATTACKS.declarations()]


def option_fields() -> dict[str, list]:
    """Every attack option (the union of the attacks' options dataclasses, in registration order)
    -> ``[(attack, options dataclass, field), ...]`` of the attacks that take it: one flag each."""
    import dataclasses

    out: dict[str, list] = {}
    for attack, _, options in _attacks():
        for f in dataclasses.fields(options):
            out.setdefault(f.name, []).append((attack, options, f))
    return out


def _flag_type(options_type: type, name: str) -> type:
    """The plain type of an option's values on the command line: ``float | None`` -> ``float``,
    ``str | tuple[Stage, ...]`` (a name, or stages from the API) -> ``str``."""
    import typing

    tp = typing.get_type_hints(options_type)[name]
    for arg in typing.get_args(tp) or (tp,):
        if arg in (bool, int, float, str):
            return arg
    raise TypeError(f"{options_type.__name__}.{name}: no command-line type for {tp}")


def _add_option_flags(p: argparse.ArgumentParser) -> None:
    """One flag per attack option (see :func:`option_fields`); its default is ``None`` (not
    given: the chosen attack's own default), its help names the attacks that take it."""
    from pellucid.robust.options import default_text

    for name, takers in option_fields().items():
        (first, first_options, f), limits = takers[0], ("help", "min", "max", "above", "choices")
        kind = _flag_type(first_options, name)
        for attack, options, g in takers[1:]:  # one flag: the same meaning and valid values everywhere
            if _flag_type(options, name) is not kind or \
                    any(g.metadata.get(k) != f.metadata.get(k) for k in limits):
                raise TypeError(f"option {name!r} of {attack} differs from {first}'s")
        defaults = {attack: default_text(g) for attack, _, g in takers}
        if len(set(defaults.values())) == 1:
            text = f"(default {next(iter(defaults.values()))}); applies to {', '.join(defaults)}"
        else:
            text = "(default: " + ", ".join(f"{a} {d}" for a, d in defaults.items()) + ")"
        add_field_option(p, f, kind, None, f"{f.metadata.get('help', name)} {text}")


def _attack_help() -> str:
    """``--attack``'s help: each attack with its options and their defaults."""
    import dataclasses

    from pellucid.robust.options import default_text

    def option(f: dataclasses.Field) -> str:
        if isinstance(f.default, bool):
            return _flag(f.name) if f.default else "--no-" + _flag(f.name)[2:]
        return f"{_flag(f.name)} {default_text(f)}"

    return ("attack; in brackets its options with their defaults: " + "; ".join(
        f"{name}: {summary} [{', '.join(map(option, dataclasses.fields(options))) or 'no options'}]"
        for name, summary, options in _attacks()) + " (default: pgd, or autoattack when --budget is given)")


def adaptive_fields() -> dict:
    """The adaptive budget's options that have no flag of their own among the attacks' options:
    ``{name: field}`` (``--steps``, ``--restarts`` and ``--queries`` are shared with the attacks)."""
    import dataclasses

    from pellucid.robust.budgets import AdaptiveBudget

    shared = option_fields()
    return {f.name: f for f in dataclasses.fields(AdaptiveBudget) if f.name not in shared}


def _add_adaptive_flags(p: argparse.ArgumentParser) -> None:
    """One flag per option of the adaptive budget (:func:`adaptive_fields`), default ``None``."""
    from pellucid.robust.options import default_text

    group = p.add_argument_group("adaptive budget (--budget adaptive; see docs/adaptive-attacks.md)")
    for name, f in adaptive_fields().items():
        kind = int if isinstance(f.default, int) else str
        add_field_option(group, f, kind, None, f"{f.metadata.get('help', name)} (default "
                         f"{default_text(f)}); applies to --budget adaptive")


def add_parser(sub, argv: Sequence[str] = ()) -> None:
    from pellucid.robust.catalogue import ATTACKS, CHUNK_SIZE  # no torch: --help stays quick

    p = sub.add_parser("evaluate", help=SUMMARY,
                       formatter_class=DefaultsHelpFormatter,
                       description="Attack a trained model's test set with the true labels, report "
                                   "clean and robust accuracy, reliability and gradient-masking "
                                   "checks, and record the result in DIR/evaluations/.")
    p.add_argument("model_dir", metavar="DIR", help="a model directory written by `pellucid train`")
    p.add_argument("--attack", default=None, choices=list(ATTACKS), help=_attack_help())
    p.add_argument("--eps", type=checked(float, min=0), default=0.3, help="perturbation budget")
    p.add_argument("--norm", default="linf", choices=["linf", "l2"], help="threat model")
    _add_option_flags(p)
    _add_adaptive_flags(p)
    p.add_argument("--limit", type=checked(int, min=1), default=None, metavar="N",
                   help="first N test images only")
    p.add_argument("--seed", type=checked(int, min=0, max=2**63 - 1), default=0,
                   help="seed of the attack's randomness")
    p.add_argument("--chunk-size", type=checked(int, min=1), default=CHUNK_SIZE, metavar="N",
                   help="images attacked together, each chunk with its own randomness (the seed "
                        "and the chunk's position), so results do not depend on how the chunks are "
                        "shared out between torchrun's processes; a size other than "
                        f"{CHUNK_SIZE} is part of the record's identity")
    p.add_argument("--checks", action=argparse.BooleanOptionalAction, default=True,
                   help="gradient-masking checks (always on for autoattack)")
    p.add_argument("--check-limit", type=checked(int, min=0), default=500, metavar="N",
                   help="images used by the unbounded-PGD and accuracy-vs-eps checks (0: all)")
    p.add_argument("--report", action="store_true",
                   help="(re)write DIR/report.html with every evaluation recorded in DIR")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars or stage lines on stderr (warnings and errors still show)")
    p.add_argument("--rejection", action="store_true",
                   help="also the epsilon-neuron rejection figures (models that can reject, e.g. "
                        "dictionary-mlp; attack directions from --attack, alpha in {1, 3, 9})")
    p.add_argument("--min-noise-rejection", type=checked(float, min=0, max=1), default=None, metavar="P",
                   help="with --rejection: the epsilon search only considers epsilons that reject "
                        "at least this fraction of uniform-noise inputs (default: the paper's "
                        "protocol, measure only)")
    add_device_option(p)
    add_data_dir(p)
    p.set_defaults(func=run)


def attack_options(args: argparse.Namespace) -> dict:
    """The options of ``args.attack``, every one with its value (the attack's default unless its
    flag was given); a flag the attack does not take is rejected, not silently ignored."""
    from pellucid.errors import InvalidInputError
    from pellucid.robust.catalogue import ATTACKS
    from pellucid.robust.options import option_values

    args.attack = resolved_attack(args)
    attack = ATTACKS.get(args.attack)
    given = {name: getattr(args, name) for name in option_fields() if getattr(args, name) is not None}
    given = _route_adaptive(args, given)
    for name in given:
        if name not in attack.option_names:
            takes = ", ".join(map(_flag, attack.option_names)) or "no options"
            raise InvalidInputError(f"{_flag(name)} does not apply to {args.attack} (it takes {takes})")
    return option_values(attack.check_options(given))


def resolved_attack(args: argparse.Namespace) -> str:
    """``--attack``, or when it is not given: ``autoattack`` with ``--budget``, else ``pgd``."""
    if getattr(args, "attack", None) is not None:
        return args.attack
    return "autoattack" if getattr(args, "budget", None) is not None else "pgd"


def _route_adaptive(args: argparse.Namespace, given: dict) -> dict:
    """With ``--budget adaptive``, the given flags that are options of the adaptive budget
    (its own and ``--steps``, ``--restarts``, ``--queries``) become one checked
    :class:`~pellucid.robust.budgets.AdaptiveBudget`; otherwise its own flags are refused."""
    import dataclasses

    from pellucid.errors import ConfigError, InvalidInputError
    from pellucid.robust.budgets import AdaptiveBudget

    own = {name: getattr(args, name) for name in adaptive_fields()
           if getattr(args, name, None) is not None}
    if given.get("budget") != "adaptive" or args.attack != "autoattack":
        if own:
            raise InvalidInputError(f"{_flag(next(iter(own)))} applies to --budget adaptive only")
        return given
    if getattr(args, "norm", "linf") != "linf":
        raise InvalidInputError(f"--budget adaptive is an L-inf budget; got --norm {args.norm}")
    names = {f.name for f in dataclasses.fields(AdaptiveBudget)}
    routed = {k: v for k, v in given.items() if k in names}
    try:
        budget = AdaptiveBudget(**routed, **own)
    except ConfigError as e:
        raise ConfigError(f"--budget adaptive: {e}") from None
    return {**{k: v for k, v in given.items() if k not in routed}, "budget": budget}


def run(args: argparse.Namespace) -> int:
    from pellucid._io import check_writable_dir
    from pellucid.distributed import start_job
    from pellucid.errors import InvalidInputError
    from pellucid.models import read_config
    from pellucid.report.evaluation import evaluate_run

    if args.min_noise_rejection is not None and not args.rejection:
        raise InvalidInputError("--min-noise-rejection applies to --rejection; add --rejection")
    options = attack_options(args)
    read_config(args.model_dir)  # a missing or broken model directory fails before any work
    transfer_from = getattr(options.get("budget"), "transfer_from", None)
    if transfer_from is not None:
        read_config(transfer_from)  # so does the adaptive budget's transfer source
    check_writable_dir(args.model_dir, "model directory")  # the record is written there at the end
    if args.report:
        from pellucid.report.html import check_report_writable

        check_report_writable(Path(args.model_dir) / "report.html")
    progress = not args.no_progress
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else None  # noqa: E731
    # under torchrun every process runs this; process 0 alone writes and prints
    with start_job(args.device) as job:
        done = evaluate_run(args.model_dir, attack=args.attack, eps=args.eps, norm=args.norm,
                            seed=args.seed, options=options, limit=args.limit, checks=args.checks,
                            check_limit=args.check_limit or None, data_dir=args.data_dir,
                            report=args.report and not args.rejection, log=log, device=job.device,
                            chunk_size=args.chunk_size, job=job, progress=progress)
    if done is None:  # another process of the job holds the results
        return 0
    summary = done.summary
    if args.rejection:
        from pellucid._io import RunLock
        from pellucid.robust.rejection import rejection_report

        summary["rejection"] = rejection_report(done.model, done.test.images.to(job.device),
                                                done.test.labels.to(job.device),
                                                attack=args.attack, seed=args.seed,
                                                attack_kwargs={"eps": args.eps, "progress": progress, **options},
                                                min_noise_rejection=args.min_noise_rejection)
        if args.report:
            from pellucid.report.evaluation import write_run_report

            with RunLock(args.model_dir):
                summary["report"] = str(write_run_report(args.model_dir, done.model, done.test,
                                                         done.result))
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
        for r in (r for cells in rej["search"]["bounds"].values() for r in cells.values()):
            print(f"  b={r['bound']:g} alpha={r['alpha']:g}: best epsilon {r['epsilon']:.4g}, measure "
                  f"{r['measure']:.4f}, adversarial rejected {r['adversarial_rejection_rate'] * 100:.2f} %, "
                  f"clean rejected {r['clean_rejection_rate'] * 100:.2f} %, noise rejected "
                  f"{r['noise_rejection_rate'] * 100:.2f} %"
                  + ("" if r["noise_constraint_met"] else " (below --min-noise-rejection)"))
    if "report" in summary:
        print(f"  report: {summary['report']}")
