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

Every config is a :class:`~pellucid.train.trainer.TrainConfig` with the recipe's own defaults (no
noise augmentation, no validation split: the per-epoch test accuracy comes from ``fit``'s
``evaluate``), so the run directory, ``--resume`` (bit for bit), progress and ``metrics.jsonl``
are ``fit``'s. A cosine run must keep its ``--epochs`` on resume: the schedule spans them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

import pellucid.models.metric  # noqa: F401  (registers the metric models)
from pellucid._config import config_option as _opt
from pellucid.data.datasets import ImageDataset, load_dataset
from pellucid.errors import InvalidInputError
from pellucid.models.inference import predict_logits
from pellucid.models.registry import MODELS, create_model
from pellucid.nn.metric.distance import LpDistance
from pellucid.train.recipes import register_recipe
from pellucid.train.trainer import TrainConfig, fit, split_train_val

__all__ = ["DictionaryMLPConfig", "LocalMLPConfig", "MetricMLPConfig", "MetricResNetConfig",
           "MetricResNetFashionConfig", "PlainMLPConfig", "train_metric_resnet20",
           "build_dictionary_mlp", "centre_groups", "train_dictionary_mlp", "train_local_mlp",
           "train_metric_mlp", "train_plain_mlp"]

_HELP = {f.name: f.metadata["help"] for f in fields(TrainConfig)}


def _same(name: str, default: Any, help: str | None = None, **limits: Any):
    """A TrainConfig option with this recipe's default (its help kept unless given)."""
    return _opt(default, help or _HELP[name], **limits)


@dataclass
class _ProtocolDefaults(TrainConfig):
    """What every metric recipe changes in the shared trainer: no augmentation, no validation split
    (test accuracy after every epoch instead), no weight decay, seed 0."""

    weight_decay: float = _same("weight_decay", 0.0, min=0)
    noise_p: float = _same("noise_p", 0.0, min=0, max=1)
    val_size: int = _same("val_size", 0, min=0)
    val_pgd_steps: int = _same("val_pgd_steps", 0, min=0)
    seed: int = _same("seed", 0, "seed of initialisation, data order and sampling", min=0, max=2**63 - 1)
    augment: str = _same("augment", "none", choices=("noise", "none"))
    dataset: str = _opt("fashion-mnist", "dataset name (see pellucid.data)")
    test_limit: int = _opt(0, "> 0: measure the per-epoch test accuracy on the first N test images", min=0)
    train_limit: int = _opt(0, "> 0: train on N training images drawn at random (seeded by --seed) "
                               "instead of the whole train split", min=0)


@dataclass
class MetricMLPConfig(_ProtocolDefaults):
    """Table 1 protocol of Metric as Transform (Fashion-MNIST)."""

    epochs: int = _same("epochs", 50, min=1)
    batch_size: int = _same("batch_size", 50, min=1)
    lr: float = _same("lr", 1e-4, "Adam learning rate (cosine-annealed to 0 over all steps)", above=0)
    schedule: str = _same("schedule", "cosine", choices=("constant", "cosine"))
    metric: str = _opt("l2", "l<p> (l0.5, l1, l2, l20, ...), stereo, cosine, linear, convex, "
                             "invex or ordinary")
    hidden: int = _opt(100, "H, metric neurons", min=1)
    variant: str = _opt("standardised", "lp only: standardised (paper) or simple",
                        choices=("standardised", "simple"))
    compiled_kernels: bool = _opt(False, "lp with p != 2: torch.compile'd distance loops (needs a C++ "
                                         "compiler; ~5x faster at p = 0.5, H = 500); may change on resume")

    EXECUTION_OPTIONS: ClassVar[tuple[str, ...]] = ("compiled_kernels",)


@dataclass
class DictionaryMLPConfig(_ProtocolDefaults):
    """Epsilon-softmax dictionary MLP of the rejection experiments (Fashion-MNIST)."""

    epochs: int = _same("epochs", 30, min=1)
    batch_size: int = _same("batch_size", 50, min=1)
    lr: float = _same("lr", 0.01, above=0)
    hidden: int = _opt(100, "H, keys", min=1)
    centre_lr_scale: float = _opt(1.0, "keys learn at lr * this (paper: 1 or 0.01)", min=0)
    data_init: bool = _opt(False, "keys = random training images, values = one-hot labels")
    epsilon_mode: str = _opt("running", "running, learned or fixed", choices=("running", "learned", "fixed"))


@dataclass
class _LocalProtocol(_ProtocolDefaults):
    """The protocol shared by the local MLPs and their plain baseline."""

    epochs: int = _same("epochs", 10, min=1)
    batch_size: int = _same("batch_size", 50, min=1)
    lr: float = _same("lr", 1e-3, above=0)
    schedule: str = _same("schedule", "cosine", choices=("constant", "cosine"))


@dataclass
class LocalMLPConfig(_LocalProtocol):
    """Input projection -> ``depth`` local blocks (residual or epsilon-highway) -> linear head."""

    width: int = _opt(64, "features of the input projection and of every block", min=1)
    hidden: int = _opt(100, "H, centres per block", min=1)
    depth: int = _opt(2, "local blocks", min=1)
    distance: str = _opt("l2", "l<p>: the blocks' distance to their centres")
    epsilon_mode: str = _opt("running", "running, learned or fixed", choices=("running", "learned", "fixed"))
    epsilon: float = _opt(1.0, "the starting epsilon of the learned and fixed modes (running: the first "
                               "batch's mean distance)", above=0)
    centre_lr_scale: float = _opt(1.0, "centres learn at lr * this", min=0)


@dataclass
class MetricResNetConfig(_ProtocolDefaults):
    """ResNet-20 protocol of Metric as Transform (CIFAR-10): SGD 0.1 with momentum 0.9, weight
    decay 5e-4, cosine over 200 epochs, batch 128, random crop and flip."""

    epochs: int = _same("epochs", 200, min=1)
    batch_size: int = _same("batch_size", 128, min=1)
    lr: float = _same("lr", 0.1, above=0)
    weight_decay: float = _same("weight_decay", 5e-4, min=0)
    optimizer: str = _same("optimizer", "sgd", choices=("adam", "sgd"))
    schedule: str = _same("schedule", "cosine", choices=("constant", "cosine"))
    augment: str = _same("augment", "crop-flip", choices=("noise", "crop-flip", "none"))
    dataset: str = _opt("cifar10", "dataset name (see pellucid.data); its images must be 3 x 32 x 32")
    metric: str = _opt("l2", "every convolution's form: l2 (conv path), stereo (conv path), linear "
                             "(nn.Conv2d), or any other vector metric name (unfold form, slower)")


@dataclass
class MetricResNetFashionConfig(MetricResNetConfig):
    """The same protocol on grey 28x28 images: Fashion-MNIST stands in for CIFAR-10."""

    dataset: str = _opt("fashion-mnist", "dataset name (see pellucid.data); its images must be 1 x 28 x 28")


@dataclass
class PlainMLPConfig(_LocalProtocol):
    """The baseline of the local MLPs: the same protocol, ReLU layers instead of local blocks."""

    width: int = _opt(87, "features of every hidden layer (87: as many parameters as the local MLPs' "
                          "defaults)", min=1)
    depth: int = _opt(2, "hidden Linear + ReLU layers", min=1)


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
        rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:train_limit]
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

@register_recipe("metric-mlp", MetricMLPConfig, "metric-neuron MLP, Metric as Transform Table 1 protocol")
def train_metric_mlp(cfg: MetricMLPConfig, out, *, resume: bool = False, progress: bool = True,
                     data_dir: str | None = None) -> dict[str, Any]:
    train, test, data = _data(cfg.dataset, data_dir, cfg.test_limit, cfg.train_limit, cfg.seed)
    torch.manual_seed(cfg.seed)
    kwargs = {"metric": cfg.metric, "hidden": cfg.hidden, "variant": cfg.variant}
    model = create_model("metric-mlp", **kwargs)
    for m in model.modules():
        if isinstance(m, LpDistance):
            m.compiled = cfg.compiled_kernels
    return _run("metric-mlp", model, kwargs, cfg, out, train, test, data, resume=resume, progress=progress)


def build_dictionary_mlp(cfg: DictionaryMLPConfig, train: ImageDataset):
    """The model (data-initialised if asked), its registry kwargs and its parameter groups (keys
    at ``lr * centre_lr_scale``)."""
    torch.manual_seed(cfg.seed)
    kwargs = {"hidden": cfg.hidden, "epsilon_mode": cfg.epsilon_mode,
              "epsilon": 1.0 if cfg.epsilon_mode != "running" else None}
    model = create_model("dictionary-mlp", **kwargs)
    if cfg.data_init:
        rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.hidden]
        model.init_from_data_(train.images[rows], train.labels[rows])
    return model, kwargs, centre_groups(model, [model.keys], cfg.lr, cfg.centre_lr_scale)


@register_recipe("dictionary-mlp", DictionaryMLPConfig, "epsilon-softmax dictionary MLP that can reject inputs")
def train_dictionary_mlp(cfg: DictionaryMLPConfig, out, *, resume: bool = False, progress: bool = True,
                         data_dir: str | None = None) -> dict[str, Any]:
    train, test, data = _data(cfg.dataset, data_dir, cfg.test_limit, cfg.train_limit, cfg.seed)
    model, kwargs, groups = build_dictionary_mlp(cfg, train)
    return _run("dictionary-mlp", model, kwargs, cfg, out, train, test, data, resume=resume,
                progress=progress, param_groups=groups)


def _local_recipe(name: str, summary: str) -> None:
    def run(cfg: LocalMLPConfig, out, *, resume: bool = False, progress: bool = True,
            data_dir: str | None = None) -> dict[str, Any]:
        return train_local_mlp(name, cfg, out, resume=resume, progress=progress, data_dir=data_dir)

    register_recipe(name, LocalMLPConfig, summary)(run)


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


_local_recipe("local-residual-mlp", "MLP of epsilon-softmax local residual blocks, y = x + V a")
_local_recipe("epsilon-highway-mlp", "MLP of epsilon-highway blocks, y = V a + b + a_eps x")


@register_recipe("plain-mlp", PlainMLPConfig, "plain ELU MLP, the local MLPs' baseline")
def train_plain_mlp(cfg: PlainMLPConfig, out, *, resume: bool = False, progress: bool = True,
                    data_dir: str | None = None) -> dict[str, Any]:
    train, test, data = _data(cfg.dataset, data_dir, cfg.test_limit, cfg.train_limit, cfg.seed)
    torch.manual_seed(cfg.seed)
    kwargs = {"width": cfg.width, "depth": cfg.depth}
    model = create_model("plain-mlp", **kwargs)
    return _run("plain-mlp", model, kwargs, cfg, out, train, test, data, resume=resume, progress=progress)


def _resnet_recipe(name: str, config_type: type, summary: str) -> None:
    def run(cfg: MetricResNetConfig, out, *, resume: bool = False, progress: bool = True,
            data_dir: str | None = None) -> dict[str, Any]:
        return train_metric_resnet20(name, cfg, out, resume=resume, progress=progress, data_dir=data_dir)

    register_recipe(name, config_type, summary)(run)


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


_resnet_recipe("metric-resnet20", MetricResNetConfig,
               "ResNet-20 with metric convolutions on CIFAR-10 (Metric as Transform protocol)")
_resnet_recipe("metric-resnet20-fashion", MetricResNetFashionConfig,
               "ResNet-20 with metric convolutions on Fashion-MNIST, the grey stand-in for CIFAR-10")
