"""Training: the shared trainer and the registered recipes (``pellucid train NAME``).

The recipes (:data:`RECIPES`, declared in :mod:`pellucid.train.catalogue`) and their configs
(:mod:`pellucid.train.config`) import no torch; the trainer's functions (``fit``,
``split_train_val``, ``train_registered_classifier``) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pellucid.train.catalogue import RECIPES, Recipe, register_recipe
from pellucid.train.config import TrainConfig

if TYPE_CHECKING:  # what __getattr__ imports on first use, for type checkers and the API reference
    from pellucid.train.recipes import train_registered_classifier
    from pellucid.train.trainer import fit, split_train_val

__all__ = ["RECIPES", "Recipe", "TrainConfig", "fit", "register_recipe", "split_train_val",
           "train_registered_classifier"]

# names whose modules import torch -> the module that defines them
_LAZY = {"fit": "pellucid.train.trainer", "split_train_val": "pellucid.train.trainer",
         "train_registered_classifier": "pellucid.train.recipes"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if not name.startswith("_"):  # a submodule not imported yet (``pellucid.train.trainer``)
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
