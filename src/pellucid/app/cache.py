"""Models (and what is derived from them) loaded once per process, shared by every user.

The app serves several users from one process. Loading a model, rewriting it for pullbacks or
measuring its reliability curve takes seconds, so each is done once and kept, keyed by what
determines it (the model's source, the method, the temperature, ...). Per-user values (the image a
user drew, their threshold) never live here: they travel with each request.

Thread safety: each key has its own lock, so two users asking for the same model wait for one
load, while a user asking for another model is not held up. A key whose value failed to build is
not stored (the next request tries again and gets the same readable error). Models are loaded with
the same function as ``pellucid explain`` (:func:`pellucid.models.loading.load_explained_model`): a
run directory (safetensors + JSON, never code) or a registered name.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable

import torch
from torch import nn

from pellucid.models.registry import ModelSpec

__all__ = ["LoadedModel", "ModelCache", "head_names"]


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode with what the app shows about it.

    ``class_names[i]`` names output ``i`` of a classifier (``None``: no names known). A model
    whose output count differs from ``len(class_names)`` has no classification head (the 2048
    features of ``fid-inception``): see :func:`head_names`. ``config`` is a run directory's
    ``config.json``.
    """

    source: str
    model: nn.Module = field(repr=False)
    spec: ModelSpec = field(repr=False)
    description: str
    random_init: bool
    config: dict[str, Any] | None = field(default=None, repr=False)
    class_names: tuple[str, ...] | None = None

    @property
    def is_run_dir(self) -> bool:
        return self.config is not None

    def as_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the model's device, in its parameters' dtype."""
        from pellucid.explain.units import model_dtype_device

        dtype, device = model_dtype_device(self.model)
        return torch.as_tensor(x).to(device=device, dtype=dtype)


class ModelCache:
    """``get(source)`` loads a model once; ``derived(key, build)`` memoises anything built from one.

    Models are moved to ``device`` once loaded. ``derived`` keeps at most ``max_derived`` values
    (least recently used dropped first): keys include user-chosen numbers such as a temperature,
    which must not grow memory without bound.
    """

    def __init__(self, device: str | torch.device = "cpu", max_derived: int = 32) -> None:
        self.device = torch.device(device)
        self._guard = threading.Lock()
        self._locks: dict[Hashable, threading.Lock] = {}
        self._models: dict[str, LoadedModel] = {}
        self._derived: OrderedDict[Hashable, Any] = OrderedDict()
        self._max_derived = max_derived

    def _lock(self, key: Hashable) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def get(self, source: str) -> LoadedModel:
        """The model named by ``source`` (a run directory or a registered name), loaded once."""
        key = _source_key(source)
        with self._lock(("model", key)):
            if key not in self._models:
                self._models[key] = _load(source, self.device)
            return self._models[key]

    def derived(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """``build()`` once per ``key`` (kept until ``max_derived`` newer keys push it out)."""
        with self._lock(("derived", key)):
            with self._guard:
                if key in self._derived:
                    self._derived.move_to_end(key)
                    return self._derived[key]
            value = build()
            with self._guard:
                self._derived[key] = value
                while len(self._derived) > self._max_derived:
                    dropped, _ = self._derived.popitem(last=False)
                    self._locks.pop(("derived", dropped), None)
            return value

    def loaded(self) -> list[str]:
        """Sources loaded so far (for tests and the status line)."""
        with self._guard:
            return [m.source for m in self._models.values()]


def _source_key(source: str) -> str:
    path = Path(source)
    return str(path.resolve()) if path.is_dir() else source


def _load(source: str, device: torch.device) -> LoadedModel:
    from pellucid.models.loading import load_explained_model
    from pellucid.models import read_config

    model, spec, description, random_init = load_explained_model(source, None)
    config = read_config(source) if Path(source).is_dir() else None
    return LoadedModel(source, model.to(device).eval(), spec, description, random_init, config,
                       _class_names(spec, config))


def _class_names(spec: ModelSpec, config: dict[str, Any] | None) -> tuple[str, ...] | None:
    """Names of a classifier's outputs: a run's recorded class names, the registered classes, or
    torchvision's ImageNet categories for the registered ImageNet classifiers."""
    data = (config or {}).get("data") or {}
    names = data.get("class_names")
    classes = data.get("classes") or spec.classes
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        if classes and len(names) > len(classes) and max(classes) < len(names):
            return tuple(names[c] for c in classes)  # names of the whole dataset, classes a subset
        return tuple(names)
    if classes:
        return tuple(str(c) for c in classes)
    if spec.dataset == "imagenet":  # a body without a head (fid-inception) has other outputs:
        from torchvision.models import ResNet50_Weights  # callers check the count
        return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    return None


def head_names(loaded: LoadedModel, n_outputs: int) -> tuple[str, ...] | None:
    """The class names of ``loaded``'s outputs if it ends in a classification head of
    ``n_outputs`` classes, else ``None``."""
    names = loaded.class_names
    return names if names is not None and len(names) == n_outputs else None
