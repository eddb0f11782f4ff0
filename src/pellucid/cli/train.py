"""``pellucid train RECIPE --out DIR [options]``: train a registered recipe."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pellucid.cli._common import (DefaultsHelpFormatter, add_data_dir, add_dataclass_options,
                                  add_device_option, dataclass_from_args, print_json)


# One line for `pellucid --help` (which imports no subcommand's dependencies).
SUMMARY = "train a registered recipe"


def add_parser(sub, argv: Sequence[str] = ()) -> None:
    """The ``train`` parser, with one sub-parser per recipe. ``argv``: the arguments after
    ``train``; when they name a recipe, only its sub-parser gets the recipe's options (the others
    are listed with their summary), else every one does (``pellucid train --help`` lists them;
    the CLI reference renders each). Imports no torch: the recipes are declared in
    :mod:`pellucid.train.catalogue`."""
    from pellucid.train.catalogue import RECIPES

    chosen = next((a for a in argv if not a.startswith("-")), None)  # train itself takes no values
    p = sub.add_parser("train", help=SUMMARY + " (recipes: " + ", ".join(RECIPES) + ")",
                       description="Train a registered recipe; checkpoints after every epoch. "
                                   "Under torchrun, data-parallel over the processes (process 0 "
                                   "writes the run directory).")
    recipes = p.add_subparsers(dest="recipe", metavar="RECIPE", required=True)
    for entry in RECIPES.entries():
        r = recipes.add_parser(entry.name, help=entry.summary, description=entry.summary,
                               formatter_class=DefaultsHelpFormatter)
        if chosen in RECIPES and entry.name != chosen:
            continue  # not the recipe argv names: never parses, so no options
        r.add_argument("--out", required=True, metavar="DIR", help="run directory")
        r.add_argument("--resume", action="store_true",
                       help="continue an interrupted run in DIR from its last finished epoch")
        r.add_argument("--no-progress", action="store_true",
                       help="no progress on stderr (no bar, no line per epoch)")
        r.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
        add_device_option(r)
        add_data_dir(r)
        add_dataclass_options(r, entry.obj.config_type)
        r.set_defaults(func=run, config_type=entry.obj.config_type)


def run(args: argparse.Namespace) -> int:
    from pellucid._io import check_writable_dir
    from pellucid.errors import Stopped
    from pellucid.distributed import start_job
    from pellucid.train.catalogue import RECIPES
    from pellucid.train.checkpointing import check_run_dir
    from pellucid.train.trainer import training_job

    cfg = dataclass_from_args(args.config_type, args)  # checks every setting
    check_writable_dir(args.out, "--out")  # before any data is loaded or epoch trained
    check_run_dir(Path(args.out), args.resume)
    with start_job(args.device) as job, training_job(job):
        try:
            result = RECIPES.get(args.recipe).run(cfg, args.out, resume=args.resume,
                                                  progress=not args.no_progress and job.is_main,
                                                  data_dir=args.data_dir)
        except Stopped as stopped:  # a finished run has nothing to continue
            raise (stopped if stopped.finished else
                   stopped.continued_by("the same command with --resume continues it")) from None
    if not job.is_main:  # process 0 reports
        return 0
    last = result["epochs"][-1] if result["epochs"] else {}
    if args.json:
        print_json({"recipe": args.recipe, "out": args.out, **last})
    else:
        print(f"trained {args.recipe} -> {args.out}: " +
              ", ".join(f"{k}={v:.4f}" for k, v in last.items() if isinstance(v, float)))
    return 0
