"""Recipes for metric-neuron models (``pellucid train NAME``), all on the shared trainer :func:`fit`.

Defaults are the paper's protocols ("Metric as Transform"):

* ``metric-mlp`` (Table 1): Adam lr 1e-4, cosine schedule per step over 50 epochs, batch 50, the
  full 60k train split; the test accuracy is measured after every epoch and the best one reported
  (the paper's "best test accuracy": a selection on the test set, so slightly optimistic; the
  final epoch's is recorded too).
* ``dictionary-mlp`` (rejection experiments): Adam lr 0.01, 30 epochs, centres random
  (``randn / 3``) or data-initialised, centre learning rate x1 or x0.01, running-mean epsilon.
* ``local-residual-mlp``, ``epsilon-highway-mlp`` and ``plain-mlp`` (their baseline): Adam lr
  1e-3, cosine over 10 epochs, batch 50, centre learning rate x ``centre_lr_scale``.
* ``metric-resnet20`` (CIFAR-10) and ``metric-resnet20-fashion`` (the same network on grey 28x28
  images, the stand-in where CIFAR-10 is not at hand): SGD lr 0.1, momentum 0.9, weight decay
  5e-4, cosine over 200 epochs, batch 128, random crop (zero padding 4) and horizontal flip.

Every config is a :class:`~pellucid.train.config.TrainConfig` with the recipe's own defaults (no
noise augmentation, no validation split: the per-epoch test accuracy comes from ``fit``'s
``evaluate``), so the run directory, ``--resume`` (bit for bit), progress and ``metrics.jsonl``
are ``fit``'s. A cosine run must keep its ``--epochs`` on resume: the schedule spans them.

The configs live in :mod:`pellucid.train.config` and the recipes are declared in
:mod:`pellucid.train.catalogue` (both without torch, for ``pellucid train --help``); the
functions here run them.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from torch import nn

import pellucid.models.metric  # noqa: F401  (registers the metric models)
from pellucid.data.datasets import ImageDataset, load_dataset
from pellucid.errors import InvalidInputError
from pellucid.models.inference import predict_logits
from pellucid.models.registry import MODELS, create_model
from pellucid.nn.metric.distance import ConvexDistance, LpDistance
from pellucid.nn.metric.invex import InvexDistance
# the settings live in a torch-free module (pellucid train RECIPE --help reads them)
from pellucid.train.config import (DictionaryMLPConfig, LocalMLPConfig, MetricMLPConfig,  # noqa: F401
                                   MetricResNetConfig, MetricResNetFashionConfig, PlainMLPConfig,
                                   _ProtocolDefaults)
from pellucid.train.trainer import fit, split_train_val

__all__ = ["DictionaryMLPConfig", "LocalMLPConfig", "MetricMLPConfig", "MetricResNetConfig",
           "MetricResNetFashionConfig", "PlainMLPConfig", "train_metric_resnet20",
           "build_dictionary_mlp", "centre_groups", "train_dictionary_mlp", "train_local_mlp",
           "train_metric_mlp", "train_plain_mlp"]

# -- shared pieces --------------------------------------------------------------------------------

def _data(dataset: str, data_dir: str | None, test_limit: int, train_limit: int = 0, seed: int = 0,
          shape: tuple[int, ...] = (1, 28, 28), who: str = "metric MLPs"):
    train, test = load_dataset(dataset, "train", data_dir=data_dir), load_dataset(dataset, "test", data_dir=data_dir)
    if tuple(train.images.shape[1:]) != shape:
        raise InvalidInputError(f"{who} take {' x '.join(map(str, shape))} images; {dataset} has "
                                f"{' x '.join(map(str, train.images.shape[1:]))}")
    if test_limit > 0:
        test = test.subset(slice(0, test_limit))
    if 0 < train_limit < len(train):
        rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed), device="cpu")[:train_limit]
        train = train.subset(rows.sort().values)
    data = {"dataset": dataset, "classes": None, "class_names": list(train.classes),
            "n_train": len(train), "n_test": len(test)}
    return train, test, data


def _test_accuracy(test: ImageDataset):
    """``fit``'s ``evaluate``: the accuracy on ``test`` after every epoch."""
    def evaluate(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device  # fit trains on the job's device
        correct = predict_logits(model, test.images.to(device)).argmax(1).cpu() == test.labels
        return {"test_accuracy": float(correct.float().mean())}

    return evaluate


def centre_groups(model: nn.Module, centres: list[nn.Parameter], lr: float, scale: float) -> list[dict]:
    """Adam groups: ``centres`` at ``lr * scale``, every other parameter at ``lr`` (in this order)."""
    ids = {id(c) for c in centres}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": centres, "lr": lr * scale}, {"params": rest, "lr": lr}]


def _run(name: str, model: nn.Module, kwargs: dict[str, Any], cfg: _ProtocolDefaults, out,
         train: ImageDataset, test: ImageDataset, data: dict, *, resume: bool, progress: bool,
         param_groups: list[dict] | None = None) -> dict[str, Any]:
    """Train ``model`` (registered as ``name`` with ``kwargs``) with :func:`fit` into ``out``; a
    ``val_size`` > 0 holds out a seeded validation split (the protocols use none)."""
    if cfg.val_size >= len(train):
        raise InvalidInputError(f"val_size (--val-size) {cfg.val_size} leaves no training images: the "
                                f"train split has {len(train)}; use at most {len(train) - 1}")
    train, val = split_train_val(train, cfg.val_size, cfg.seed) if cfg.val_size else (train, test.subset(slice(0, 0)))
    data = {**data, "n_train": len(train), **({"n_val": len(val)} if len(val) else {})}
    history = fit(model, train, val, cfg, out, model_name=name,
                  model_kwargs=kwargs, extra_config={"data": data}, resume=resume, progress=progress,
                  param_groups=param_groups, evaluate=_test_accuracy(test))
    return {"model": name, "out": str(out), "epochs": history, "config": asdict(cfg)}


# -- recipes --------------------------------------------------------------------------------------

def train_metric_mlp(cfg: MetricMLPConfig, out, *, resume: bool = False, progress: bool = True,
                     data_dir: str | None = None) -> dict[str, Any]:
    train, test, data = _data(cfg.dataset, data_dir, cfg.test_limit, cfg.train_limit, cfg.seed)
    torch.manual_seed(cfg.seed)
    kwargs = {"metric": cfg.metric, "hidden": cfg.hidden, "variant": cfg.variant}
    model = create_model("metric-mlp", **kwargs)
    for m in model.modules():
        if isinstance(m, (LpDistance, ConvexDistance)):
            m.compiled = cfg.compiled_kernels
        if isinstance(m, InvexDistance):
            m.factored_output = cfg.factored_output
    return _run("metric-mlp", model, kwargs, cfg, out, train, test, data, resume=resume, progress=progress)


def build_dictionary_mlp(cfg: DictionaryMLPConfig, train: ImageDataset):
    """The model (data-initialised if asked), its registry kwargs and its parameter groups (keys
    at ``lr * centre_lr_scale``)."""
    torch.manual_seed(cfg.seed)
    kwargs = {"hidden": cfg.hidden, "epsilon_mode": cfg.epsilon_mode,
              "epsilon": 1.0 if cfg.epsilon_mode != "running" else None}
    model = create_model("dictionary-mlp", **kwargs)
    if cfg.data_init:
        rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed), device="cpu")[:cfg.hidden]
        model.init_from_data_(train.images[rows], train.labels[rows])
    return model, kwargs, centre_groups(model, [model.keys], cfg.lr, cfg.centre_lr_scale)


def train_dictionary_mlp(cfg: DictionaryMLPConfig, out, *, resume: bool = False, progress: bool = True,
                         data_dir: str | None = None) -> dict[str, Any]:
    train, test, data = _data(cfg.dataset, data_dir, cfg.test_limit, cfg.train_limit, cfg.seed)
    model, kwargs, groups = build_dictionary_mlp(cfg, train)
    return _run("dictionary-mlp", model, kwargs, cfg, out, train, test, data, resume=resume,
                progress=progress, param_groups=groups)


def train_local_mlp(name: str, cfg: LocalMLPConfig, out, *, resume: bool = False, progress: bool = True,
                    data_dir: str | None = None) -> dict[str, Any]:
    """Train registered ``local-residual-mlp`` or ``epsilon-highway-mlp`` (centres at
    ``lr * centre_lr_scale``)."""
    train, test, data = _data(cfg.dataset, data_dir, cfg.test_limit, cfg.train_limit, cfg.seed)
    torch.manual_seed(cfg.seed)
    kwargs = {"width": cfg.width, "hidden": cfg.hidden, "depth": cfg.depth, "distance": cfg.distance,
              "epsilon_mode": cfg.epsilon_mode, "epsilon": cfg.epsilon if cfg.epsilon_mode != "running" else None}
    model = create_model(name, **kwargs)
    groups = centre_groups(model, [b.centres for b in model.blocks], cfg.lr, cfg.centre_lr_scale)
    return _run(name, model, kwargs, cfg, out, train, test, data, resume=resume, progress=progress,
                param_groups=groups)


def train_plain_mlp(cfg: PlainMLPConfig, out, *, resume: bool = False, progress: bool = True,
                    data_dir: str | None = None) -> dict[str, Any]:
    train, test, data = _data(cfg.dataset, data_dir, cfg.test_limit, cfg.train_limit, cfg.seed)
    torch.manual_seed(cfg.seed)
    kwargs = {"width": cfg.width, "depth": cfg.depth}
    model = create_model("plain-mlp", **kwargs)
    return _run("plain-mlp", model, kwargs, cfg, out, train, test, data, resume=resume, progress=progress)


def train_metric_resnet20(name: str, cfg: MetricResNetConfig, out, *, resume: bool = False,
                          progress: bool = True, data_dir: str | None = None) -> dict[str, Any]:
    """Train registered ``metric-resnet20`` (CIFAR-10) or ``metric-resnet20-fashion`` (grey
    28x28) with the ResNet protocol; the per-epoch test accuracy is recorded."""
    kwargs = {"metric": cfg.metric}
    torch.manual_seed(cfg.seed)
    model = create_model(name, **kwargs)  # an unknown metric fails here, before the data loads
    train, test, data = _data(cfg.dataset, data_dir, cfg.test_limit, cfg.train_limit, cfg.seed,
                              shape=tuple(MODELS.get(name).input_shape), who=name)
    return _run(name, model, kwargs, cfg, out, train, test, data, resume=resume, progress=progress)
