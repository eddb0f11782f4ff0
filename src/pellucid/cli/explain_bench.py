"""``pellucid explain-bench``: every explanation method scored by every faithfulness metric.

    pellucid explain-bench --model runs/wb --n 16 --out table.csv --figure table.png --json
    pellucid explain-bench --model runs/lenet --methods pullback gradient integrated-gradients \\
        --metrics infidelity faithfulness_correlation deletion

``--model`` is a pellucid model directory (its test split gives the images: the first ``--n``,
each explained for its label) or a registered name with pretrained weights given ``--image``
files (each explained for its top output). Methods and metrics are the registered ones
(``pellucid explain-bench --list``). The table is written as CSV or JSON (from ``--out``'s
suffix), and optionally drawn (``--figure``). Every option is checked before the model is built.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pellucid.cli._common import DefaultsHelpFormatter, add_device_option, checked

SUMMARY = "score explanation methods with faithfulness metrics (a table and a figure)"
TABLE_SUFFIXES = (".csv", ".json")
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


def add_parser(sub, argv: Sequence[str] = ()) -> None:
    p = sub.add_parser("explain-bench", help=SUMMARY, formatter_class=DefaultsHelpFormatter)
    p.add_argument("--model", metavar="NAME|DIR",
                   help="a model directory written by `pellucid train`, or a registered name with "
                        "pretrained weights (then give --image)")
    p.add_argument("--image", nargs="+", default=None, metavar="PATH",
                   help="image files or skimage:NAME (default: the model directory's test images)")
    p.add_argument("--n", type=checked(int, min=2), default=16,
                   help="test images to explain (the first N of the test split)")
    p.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                   help="registered explanation methods (default: all)")
    p.add_argument("--metrics", nargs="+", default=None, metavar="NAME",
                   help="registered metrics (default: all)")
    p.add_argument("--mosaics", type=checked(int, min=1), default=16,
                   help="2 x 2 mosaics for pointing_game and focus")
    p.add_argument("--seed", type=checked(int, min=0), default=0, help="seed of every random draw")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: the offline sources)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help=f"write the table here ({', '.join(TABLE_SUFFIXES)}); an existing file is "
                        "replaced atomically")
    p.add_argument("--figure", default=None, metavar="FILE", help="draw the table (.png, .pdf, .svg)")
    p.add_argument("--list", action="store_true", help="list the methods and metrics and exit")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--no-progress", action="store_true", help="no line per finished row on stderr")
    add_device_option(p)
    p.set_defaults(func=run)


def check_options(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Names, files and paths checked before any model is built; returns (methods, metrics)."""
    from pellucid.cli._common import check_out_path
    from pellucid.data.images import check_image_source
    from pellucid.errors import InvalidInputError
    from pellucid.explain.methods import EXPLAINERS
    from pellucid.explain.metrics import METRICS

    if args.model is None:
        raise InvalidInputError("--model is required (a model directory or a registered name)")
    methods = args.methods or list(EXPLAINERS)
    metrics = args.metrics or list(METRICS)
    for names, registry, option in ((methods, EXPLAINERS, "--methods"), (metrics, METRICS, "--metrics")):
        unknown = [n for n in names if n not in registry]
        if unknown:
            raise InvalidInputError(f"{option}: unknown {', '.join(map(repr, unknown))}; known: "
                                    f"{', '.join(registry)}")
    for source in args.image or ():
        check_image_source(source, "--image")
    if args.image is not None and len(args.image) < 2:
        raise InvalidInputError("--image: give at least 2 images (metrics need a batch)")
    if args.out is not None:
        check_out_path(args.out, args.image or [], TABLE_SUFFIXES)
    if args.figure is not None:
        check_out_path(args.figure, args.image or [], FIGURE_SUFFIXES, "--figure")
        if args.out is not None and Path(args.out).absolute() == Path(args.figure).absolute():
            raise InvalidInputError("--out and --figure name the same file")
    return methods, metrics


def _load(args: argparse.Namespace, device):
    """``(model, images, target, labels, description, value_range)``, the model and tensors on
    ``device``."""
    import torch

    from pellucid.data.images import load_image
    from pellucid.models.loading import load_explained_model
    from pellucid.errors import InvalidInputError
    from pellucid.models import is_model_dir, read_config
    from pellucid.report.evaluation import load_test_set

    model, spec, description, random_init = load_explained_model(args.model, None)
    if random_init:
        raise InvalidInputError(f"{spec.name} has no trained weights: scoring explanations of a "
                                "random network says nothing; pass a model directory written by "
                                "`pellucid train`")
    model = model.to(device).eval()
    if args.image:
        x = torch.cat([load_image(s, spec.input_shape) for s in args.image]).to(device)
        lo, hi = spec.value_range
        return model, x * (hi - lo) + lo, None, None, description, spec.value_range
    if not is_model_dir(Path(args.model)):
        raise InvalidInputError(f"--model {args.model!r} is a registered name: give --image files to "
                                "explain (test images come from a model directory's dataset)")
    test = load_test_set(read_config(Path(args.model)), args.data_dir, args.n)
    x, y = test.images.to(device), test.labels.to(device)
    return model, x, y, y, description, spec.value_range


def write_table(rows: list[dict], path: Path) -> None:
    import csv
    import io

    from pellucid._io import save_bytes_atomic

    if path.suffix.lower() == ".json":
        data = json.dumps(rows, indent=1).encode()
    else:
        buffer = io.StringIO()
        keys = [k for k in rows[0] if k != "options"]
        writer = csv.DictWriter(buffer, fieldnames=keys + ["options"], lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({**{k: row[k] for k in keys}, "options": json.dumps(row["options"])})
        data = buffer.getvalue().encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_bytes_atomic(path, data)


def run(args: argparse.Namespace) -> int:
    from pellucid.cli._common import print_json

    if args.list:
        from pellucid.explain.methods import EXPLAINERS
        from pellucid.explain.metrics import METRICS
        listing = {"methods": list(EXPLAINERS), "metrics": list(METRICS)}
        if args.json:
            print_json(listing)
        else:
            print("methods:", " ".join(listing["methods"]))
            print("metrics:", " ".join(listing["metrics"]))
        return 0
    from pellucid.explain.bench import explain_bench

    from pellucid._device import device_name, resolve_device

    t0 = time.time()
    methods, metrics = check_options(args)
    device = resolve_device(args.device)
    model, x, target, labels, description, value_range = _load(args, device)
    if labels is None and any(m in ("pointing_game", "focus") for m in metrics):
        from pellucid.errors import InvalidInputError
        raise InvalidInputError("pointing_game and focus need labelled images (a model directory's "
                                "test set); drop them from --metrics for --image files")

    def progress(row) -> None:
        print(f"{row.method:>22} {row.metric:<30} {row.mean:.4g} (+- {row.sem:.2g}, n={row.n})",
              file=sys.stderr, flush=True)

    rows = [r.to_dict() for r in explain_bench(model, x, target, methods=methods, metrics=metrics,
                                               labels=labels, n_mosaics=args.mosaics,
                                               seed=args.seed, value_range=value_range,
                                               on_row=None if args.no_progress else progress)]
    if args.out:
        write_table(rows, Path(args.out))
    if args.figure:
        from pellucid.viz.explain import bench_figure
        bench_figure(rows, args.figure, title=description)
    summary = {"model": description, "n": len(x), "methods": methods, "metrics": metrics,
               "seed": args.seed, "rows": rows, "out": args.out, "figure": args.figure,
               "device": device_name(device),
               "seconds": round(time.time() - t0, 2)}
    if args.json:
        print_json(summary)
    elif args.out or args.figure:
        print("wrote", " and ".join(p for p in (args.out, args.figure) if p))
    return 0
