"""``pellucid explain``: excitation pullback (or gradient) and a counterfactual for image files.

    pellucid explain --model resnet50 --image cat.jpg --target 281 --out cat.png
    pellucid explain --model fid-inception --image skimage:chelsea skimage:coffee \\
        --target skimage:coffee skimage:chelsea --out docs/img/morph.png --json

``--model`` is a registered name (ImageNet names load torchvision weights, see ``--weights``) or a
pellucid model directory. ``--image`` takes files or ``skimage:NAME`` (a photo shipped with
scikit-image). ``--target`` is a class/unit index, or an image whose output the input is morphed
toward (cosine similarity); one for all images or one per image; default: the top output.
``--out`` is one file (the format from its suffix) holding one row per image.

Every option is checked before a model is built or an image decoded (target indices against the
model's number of outputs right after it is built), so a user error costs no work and writes no
file. Weights files are read as tensors only; TorchScript archives are refused unopened. A
registered name without pretrained weights (or ``--weights none``) explains a randomly initialised
network: a warning says so and the output is marked (``random_init``).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pellucid._warnings import recorded_warnings
from pellucid.cli._common import OUT_SUFFIXES, DefaultsHelpFormatter, add_device_option, check_out_path

_INDEX = re.compile(r"-?[0-9]+")  # ASCII digits only: int() also takes "²"-like digits it cannot parse


# One line for `pellucid --help` (which imports no subcommand's dependencies).
SUMMARY = "excitation pullback and counterfactual of images"


def add_parser(sub, argv: Sequence[str] = ()) -> None:
    p = sub.add_parser("explain", help=SUMMARY,
                       formatter_class=DefaultsHelpFormatter)
    p.add_argument("--model", required=True, metavar="NAME|DIR",
                   help="registered model name (resnet50, vgg11_bn, densenet121, resnext50_32x4d, "
                        "inception_v3, googlenet, fid-inception, ...) or a pellucid model directory")
    p.add_argument("--image", required=True, nargs="+", metavar="PATH",
                   help="image file(s) or skimage:NAME (e.g. skimage:chelsea)")
    p.add_argument("--target", nargs="+", default=None, metavar="T",
                   help="class/unit index, or an image to morph toward (cosine similarity of outputs); "
                        "one for all or one per image (default: top output)")
    p.add_argument("--method", default="pullback", metavar="NAME",
                   help="a registered explanation method: pullback (soft gates in the backward "
                        "pass), gradient, input-x-gradient, integrated-gradients, smoothgrad, "
                        "gradient-shap, deeplift, guided-backprop, grad-cam, guided-grad-cam "
                        "(`pellucid explain-bench --list`)")
    p.add_argument("--temperature", type=float, default=0.3, help="tau of the soft gates")
    p.add_argument("--gate", default="sigmoid", choices=["sigmoid", "normal_cdf"], help="backward gate")
    p.add_argument("--steps", type=int, default=5, help="counterfactual ascent steps (0: none)")
    p.add_argument("--alpha", type=float, default=20.0,
                   help="L2 length of each ascent step, in [0, 1] pixel units")
    p.add_argument("--eps", type=float, default=None, help="L2 radius around the input (default: none)")
    p.add_argument("--weights", default=None,
                   help="ImageNet names: torchvision weights name (default DEFAULT), a local file, or "
                        "'none' for random init; fid-inception: the installed package by default; "
                        "models trained with pellucid: a .safetensors state dict. Files are read as "
                        "tensors only (TorchScript archives are refused)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="save the explanation grid here: one file with one row per image (input | "
                        "pullback or gradient | counterfactual | difference); the "
                        f"suffix picks the format ({', '.join(OUT_SUFFIXES)}); missing folders are "
                        "created, an existing file is replaced")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    add_device_option(p)
    p.set_defaults(func=run)


# --------------------------------------------------------------------------- options


def check_options(args: argparse.Namespace) -> None:
    """Every check that needs neither the model nor decoded images; raises a one-line error."""
    from pellucid.data.images import check_image_source
    from pellucid.errors import InvalidInputError
    from pellucid.models.loading import check_weights_option

    from pellucid.explain.methods import EXPLAINERS

    if args.method not in EXPLAINERS:
        raise InvalidInputError(f"--method: unknown {args.method!r}; known: {', '.join(EXPLAINERS)}")
    if args.steps < 0:
        raise InvalidInputError(f"--steps must be >= 0, got {args.steps}")
    for option, value, allow_none in (("--temperature", args.temperature, False),
                                      ("--alpha", args.alpha, False), ("--eps", args.eps, True)):
        if value is None and allow_none:
            continue
        if not (math.isfinite(value) and value > 0):
            raise InvalidInputError(f"{option} must be a finite number > 0, got {value}")
    for source in args.image:
        check_image_source(source, "--image")
    if args.target is not None:
        if len(args.target) not in (1, len(args.image)):
            raise InvalidInputError(f"--target: got {len(args.target)} targets for {len(args.image)} "
                                    "image(s); give one for all images or one per image")
        indices = [bool(_INDEX.fullmatch(v)) for v in args.target]
        if any(indices) and not all(indices):
            raise InvalidInputError("--target mixes class/unit indices and images; use one kind for all")
        if not any(indices):
            for source in args.target:
                check_image_source(source, "--target")
    if args.out is not None:
        check_out_path(args.out, args.image)
    check_weights_option(args.model, args.weights)


def check_target_range(values: list[str] | None, model, spec) -> None:
    """Index targets lie in ``[0, outputs)``, compared as Python ints (no overflow); the number of
    outputs comes from one forward pass of a grey image."""
    import torch

    from pellucid.errors import InvalidInputError

    if values is None or not all(_INDEX.fullmatch(v) for v in values):
        return
    lo, hi = spec.value_range
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with torch.no_grad():
        probe = model(torch.full((1, *spec.input_shape), (lo + hi) / 2, device=device))
    if not isinstance(probe, torch.Tensor) or probe.dim() < 2:
        return  # the explainer reports outputs it cannot pick a target from
    n_out = probe.flatten(1).shape[1]
    for v in values:
        digits = v.lstrip("-")
        if v.startswith("-") or len(digits) > 18 or int(digits) >= n_out:
            shown = v if len(v) <= 24 else v[:20] + "..."
            raise InvalidInputError(f"--target {shown} is out of range: {spec.name} has {n_out} outputs "
                                    f"(valid targets 0..{n_out - 1})")


# --------------------------------------------------------------------------- images


# --------------------------------------------------------------------------- targets


def parse_targets(values: list[str] | None, n_images: int, model, shape, device=None):
    """``None``, an index tensor ``(B,)``, or a cosine-similarity target function; tensors on
    ``device`` (default: the CPU)."""
    import torch

    from pellucid.data.images import load_image
    from pellucid.errors import InvalidInputError
    from pellucid.explain import cosine_similarity_target

    if values is None:
        return None, None
    if len(values) not in (1, n_images):
        raise InvalidInputError(f"--target: got {len(values)} targets for {n_images} image(s); give one "
                                "for all images or one per image")
    values = values * n_images if len(values) == 1 else values
    ints = [bool(_INDEX.fullmatch(v)) for v in values]
    if all(ints):  # in range: see check_target_range
        return torch.tensor([int(v) for v in values], device=device), [int(v) for v in values]
    if any(ints):
        raise InvalidInputError("--target mixes class/unit indices and images; use one kind for all")
    refs = torch.cat([load_image(v, shape) for v in values]).to(device)
    with torch.no_grad():
        reference = model(refs)
    return cosine_similarity_target(reference), [f"cosine({v})" for v in values]


# --------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    import torch

    from pellucid.cli._common import print_json
    from pellucid.data.images import load_image
    from pellucid.errors import InvalidInputError
    from pellucid.models.loading import load_explained_model, random_init_warning
    from pellucid.explain import ExcitationPullback, counterfactual, create_explainer
    from pellucid.explain.rewrite import Surrogate, check_forward_unchanged

    from pellucid._device import device_name, resolve_device

    t0 = time.time()
    check_options(args)
    device = resolve_device(args.device)
    model, spec, description, random_init = load_explained_model(args.model, args.weights)
    model = model.to(device)
    if spec.input_shape is None or len(spec.input_shape) != 3:
        raise InvalidInputError(f"{spec.name} does not take images (input shape {spec.input_shape})")
    check_target_range(args.target, model, spec)
    x = torch.cat([load_image(s, spec.input_shape) for s in args.image]).to(device)
    lo, hi = spec.value_range
    x = x * (hi - lo) + lo
    target, target_labels = parse_targets(args.target, len(args.image), model, spec.input_shape,
                                          device)
    if random_init:
        print(f"pellucid explain: warning: {random_init_warning(spec, args.weights)}", file=sys.stderr)

    with recorded_warnings() as caught:
        explainer = create_explainer(args.method, model, temperature=args.temperature, gate=args.gate)
    for w in caught:
        print(f"pellucid explain: warning: {str(w).splitlines()[0]}", file=sys.stderr)
    coverage = getattr(explainer, "coverage", None)
    forward_diff = None
    if isinstance(explainer, ExcitationPullback) and explainer.rewritten is not None:
        with torch.no_grad():  # raises unless the rewritten forward is bit-identical
            forward_diff = check_forward_unchanged(Surrogate(explainer.rewritten, coverage), x, model(x))

    with torch.no_grad():
        output = model(x)
    attribution = explainer.attribute(x, target=target)
    result = counterfactual(explainer, x, target, steps=args.steps, alpha=args.alpha, eps=args.eps,
                            pixel_range=(lo, hi)) if args.steps > 0 else None
    if args.out:
        from pellucid.viz.explain import explanation_grid
        labels = [Path(s).name if not s.startswith("skimage:") else s for s in args.image]
        mark = f"{spec.name}: randomly initialised (no trained weights)" if random_init else None
        explanation_grid(args.out, ((x - lo) / (hi - lo)).cpu(), attribution.cpu(),
                         None if result is None else ((result.counterfactual - lo) / (hi - lo)).cpu(),
                         row_labels=labels, method=args.method, title=mark)

    summary = {
        "model": description, "random_init": random_init, "method": args.method, "images": args.image,
        "temperature": args.temperature if args.method == "pullback" else None,
        "gate": args.gate if args.method == "pullback" else None,
        "steps": args.steps, "alpha": args.alpha, "eps": args.eps,
        "target": target_labels if target_labels is not None else output.flatten(1).argmax(1).tolist(),
        "top5": output.flatten(1).topk(min(5, output.flatten(1).shape[1]), 1).indices.tolist(),
        "attribution_l2": attribution.flatten(1).norm(dim=1).tolist(),
        "score_before": None if result is None else result.scores[0].tolist(),
        "score_after": None if result is None else result.scores[-1].tolist(),
        "coverage": None if coverage is None else coverage.to_dict(),
        "forward_max_abs_diff": forward_diff, "out": args.out, "device": device_name(device),
        "seconds": round(time.time() - t0, 2),
    }
    if args.json:
        print_json(summary)
    else:
        if coverage is not None:
            print(coverage)
        print(f"{description}: {args.method}, target {summary['target']}")
        if result is not None:
            for name, before, after in zip(args.image, summary["score_before"], summary["score_after"]):
                print(f"  {name}: score {before:.4g} -> {after:.4g} after {args.steps} steps")
        if args.out:
            print(f"wrote {args.out}")
    return 0
