"""``pellucid inspect``: what a hidden unit detects, from its input gradients on Gaussian noise.

    pellucid inspect RUN --list
    pellucid inspect RUN --unit features.3:7 --n 8 --seed 0
    pellucid inspect RUN --unit conv:0@10,12 --out conv0.png --json

``RUN`` is a model directory. ``--unit PATH:CHANNEL[@H,W]`` names a module of the model (a name
``--list`` prints; ``:CHANNEL`` alone is the model's output) and an output channel; a spatial
output is read at ``@H,W`` or, by default, at its centre. The ``--n`` noise images are drawn from
``N(centre of the value range, (range width / 4)^2)`` clamped to the model's value range, seeded by
``--seed`` (:func:`pellucid.explain.units.unit_gradients_on_noise`). The grid (noise above, the
unit's input gradient below) goes to ``RUN/units/PATH-CHANNEL.png`` (written atomically under the
run directory's lock) or to ``--out``.

Every option, ``RUN`` and ``--out`` are checked before the model is loaded, and the unit against
the model's layers (one forward on a blank input) before any gradient is computed: a user error
exits 2 with one line and writes nothing.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from pellucid.cli._common import DefaultsHelpFormatter, add_device_option, checked, print_json

MAX_N = 64  # draws shown on one grid

# One line for `pellucid --help` (which imports no subcommand's dependencies).
SUMMARY = "what a hidden unit detects: its input gradients on Gaussian noise"


def add_parser(sub, argv: Sequence[str] = ()) -> None:
    p = sub.add_parser("inspect", help=SUMMARY, formatter_class=DefaultsHelpFormatter,
                       description="Draw a hidden unit's input gradients on Gaussian-noise images "
                                   "(an input-independent picture of what it detects), or list the "
                                   "addressable modules.")
    p.add_argument("run", metavar="RUN", help="a model directory (written by `pellucid train`)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--unit", metavar="PATH:CHANNEL",
                      help="module path and output channel, e.g. features.3:7 or conv:0@14,14 "
                           "(spatial outputs: at @H,W, else the centre); see --list")
    what.add_argument("--list", action="store_true",
                      help="print the addressable module paths with their output channels")
    p.add_argument("--n", type=checked(int, min=1, max=MAX_N), default=None, metavar="N",
                   help="number of noise images (default 8, at most 64)")
    p.add_argument("--seed", type=checked(int, min=0, max=2**63 - 1), default=None,
                   help="seed of the noise (default 0)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="write the grid here instead of RUN/units/PATH-CHANNEL.png; the suffix picks "
                        "the format (.png, .jpg, .jpeg, .pdf, .svg)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    add_device_option(p)
    p.set_defaults(func=run)


def _check_options(args: argparse.Namespace):
    """Everything that needs no model: returns ``(config, parsed unit or None, output path)``."""
    from pellucid._io import check_writable_dir
    from pellucid.cli._common import check_out_path
    from pellucid.errors import InvalidInputError
    from pellucid.explain.units import parse_unit
    from pellucid.models import read_config

    if args.list:
        given = [flag for flag, value in (("--n", args.n), ("--seed", args.seed), ("--out", args.out))
                 if value is not None]
        if given:
            raise InvalidInputError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} "
                                    "to --unit, not --list; leave it out")
    config = read_config(args.run)  # a missing or broken model directory fails here
    if args.list:
        return config, None, None
    unit = parse_unit(args.unit, "--unit")
    if args.out is not None:
        check_out_path(args.out, [])
        out = Path(args.out)
    else:
        out = Path(args.run) / "units" / f"{unit.slug}.png"
        check_writable_dir(out.parent, "RUN")
    return config, unit, out


def _probe(model, spec):
    """Per-module output shapes from one forward on a blank input (0 clamped to the value range)."""
    import torch

    from pellucid.errors import InvalidInputError
    from pellucid.explain.units import model_dtype_device, module_output_shapes

    if spec.input_shape is None:
        raise InvalidInputError(f"{spec.name} does not declare its input shape; inspect needs it to "
                                "draw noise images")
    dtype, device = model_dtype_device(model)
    blank = torch.zeros((1, *spec.input_shape), dtype=dtype, device=device).clamp(*spec.value_range)
    return module_output_shapes(model, blank)


def run(args: argparse.Namespace) -> int:
    from pellucid._io import RunLock
    from pellucid.explain.units import check_unit, gradient_alignment, unit_gradients_on_noise
    from pellucid.models import MODELS, load_model

    from pellucid._device import device_name, resolve_device

    t0 = time.time()
    config, unit, out = _check_options(args)
    device = resolve_device(args.device)
    model, config = load_model(args.run, map_location=device)
    spec = MODELS.get(config["model"])
    shapes = _probe(model, spec)
    if args.list:
        return _print_list(config["model"], shapes, args.json)
    unit = check_unit(model, unit, shapes, "--unit")
    n = 8 if args.n is None else args.n
    seed = 0 if args.seed is None else args.seed
    result = unit_gradients_on_noise(model, unit, n, seed, input_shape=spec.input_shape,
                                     value_range=spec.value_range)

    from pellucid.viz.units import unit_gradient_grid

    title = (f"{config['model']} unit {result.unit}: input gradients on Gaussian noise "
             f"(mean {result.mean:g}, std {result.std:g}, seed {seed})")
    draw = lambda: unit_gradient_grid(out, result.gradients.cpu(), result.inputs.cpu(),  # noqa: E731
                                      title=title, values=result.values.cpu(),
                                      value_range=spec.value_range)
    if args.out is None:
        with RunLock(args.run, "pellucid inspect"):
            draw()
    else:
        draw()
    norms = result.gradients.flatten(1).norm(dim=1)
    summary = {
        "model": config["model"], "run": str(args.run), "unit": str(result.unit),
        "path": result.unit.path, "channel": result.unit.channel,
        "position": None if result.unit.position is None else list(result.unit.position),
        "n": n, "seed": seed, "mean": result.mean, "std": result.std, "device": device_name(device),
        "value_range": list(spec.value_range), "file": str(out),
        "gradient_norms": norms.tolist(), "values": result.values.tolist(),
        "alignment": gradient_alignment(result.gradients) if n >= 2 else None,
        "seconds": round(time.time() - t0, 2),
    }
    if args.json:
        print_json(summary)
    else:
        align = "" if summary["alignment"] is None else f", alignment {summary['alignment']:.3f}"
        print(f"{config['model']} {result.unit}: {n} noise gradients (mean |g| "
              f"{float(norms.mean()):.4g}{align}); wrote {out}")
    return 0


def _print_list(model_name: str, shapes: dict, as_json: bool) -> int:
    rows = [{"path": path, "channels": shape[0] if shape else None,
             "shape": None if shape is None else list(shape)} for path, shape in shapes.items()]
    if as_json:
        print_json({"model": model_name, "modules": rows})
        return 0
    width = max(len(r["path"] or "(output)") for r in rows)
    print(f"{'PATH':<{width}}  {'CHANNELS':>8}  SHAPE")
    for r in rows:
        shape = "not one tensor" if r["shape"] is None else " x ".join(map(str, r["shape"]))
        channels = "-" if r["channels"] is None else str(r["channels"])
        print(f"{r['path'] or '(output)':<{width}}  {channels:>8}  {shape}")
    print("address a unit as PATH:CHANNEL (the output as :CHANNEL); spatial outputs take @H,W "
          "(default: the centre)")
    return 0
