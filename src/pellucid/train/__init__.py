"""Training: the shared trainer and the registered recipes (``pellucid train NAME``).

The recipes (:data:`RECIPES`, declared in :mod:`pellucid.train.catalogue`) and their configs
(:mod:`pellucid.train.config`) import no torch; the trainer's functions (``fit``,
``split_train_val``, ``train_registered_classifier``) are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pellucid._lazy import lazy_attributes

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


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
