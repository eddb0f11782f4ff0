"""Training recipes: a registered name -> (config dataclass, how to build model and data).

``pellucid train NAME`` turns the recipe's config fields into command-line options, so a new
recipe needs no CLI code. The registry and the recipes pellucid ships are declared in
:mod:`pellucid.train.catalogue` (no torch, so ``pellucid train --help`` is quick); this module
trains the classifier recipes (:func:`train_registered_classifier`).
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Callable

import torch

from pellucid.data.datasets import load_dataset
from pellucid.errors import InvalidInputError
from pellucid.models.registry import MODELS, create_model
from pellucid.train.catalogue import RECIPES, Recipe, register_recipe
from pellucid.train.config import TrainConfig
from pellucid.train.trainer import fit, split_train_val

__all__ = ["RECIPES", "Recipe", "config_fields", "register_recipe", "train_registered_classifier"]


def config_fields(config_type: type) -> list:
    return list(fields(config_type))


def train_registered_classifier(model_name: str, cfg: TrainConfig, out: Path | str, *,
                                resume: bool = False, progress: bool = True,
                                data_dir: str | None = None,
                                model_kwargs: dict[str, Any] | None = None,
                                on_epoch: Callable[[torch.nn.Module, dict[str, Any]], None] | None = None
                                ) -> dict[str, Any]:
    """Train registered model ``model_name`` on its registered dataset/classes (``on_epoch``: see
    :func:`~pellucid.train.trainer.fit`)."""
    spec = MODELS.get(model_name)
    ds = load_dataset(spec.dataset, "train", classes=spec.classes, data_dir=data_dir)
    if cfg.val_size >= len(ds):
        raise InvalidInputError(f"val_size (--val-size) {cfg.val_size} leaves no training images: the "
                                f"train split has {len(ds)}; use at most {len(ds) - 1}")
    train, val = split_train_val(ds, cfg.val_size, cfg.seed)
    torch.manual_seed(cfg.seed)  # the model's initialisation
    model = create_model(model_name, **(model_kwargs or {}))
    data = {"dataset": spec.dataset, "classes": list(spec.classes) if spec.classes else None,
            "class_names": list(ds.classes), "n_train": len(train), "n_val": len(val)}
    history = fit(model, train, val, cfg, out, model_name=model_name, model_kwargs=model_kwargs,
                  extra_config={"data": data}, resume=resume, progress=progress, on_epoch=on_epoch)
    return {"model": model_name, "out": str(out), "epochs": history, "config": asdict(cfg)}
