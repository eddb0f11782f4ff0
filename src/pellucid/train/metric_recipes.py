"""Recipes for metric-neuron models: ``pellucid train metric-mlp`` and ``pellucid train dictionary-mlp``.

Defaults are the paper's protocols ("Metric as Transform"):

* metric MLP (Table 1): Adam lr 1e-4, cosine schedule over 50 epochs, batch 50, the full 60k train
  split; the test accuracy is measured after every epoch and the best one reported (the paper's
  "best test accuracy": a selection on the test set, so slightly optimistic; the final epoch's is
  recorded too).
* dictionary MLP (rejection experiments): Adam lr 0.01, 30 epochs, centres random (``randn / 3``)
  or data-initialised, centre learning rate x1 or x0.01, running-mean epsilon.

These use their own short loop instead of :func:`pellucid.train.fit` because they need a per-step
cosine learning-rate schedule, per-parameter-group learning rates and per-epoch test accuracy; the
output directory has the same layout (``model.safetensors`` + ``config.json`` with a ``data``
section, ``metrics.jsonl``) so ``pellucid evaluate DIR`` works on it, and the same resumable
``train_state.safetensors``: ``--resume`` continues an interrupted run bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import pellucid.models.metric  # noqa: F401  (registers metric-mlp, dictionary-mlp)
from pellucid._io import RunLock
from pellucid.data.datasets import ImageDataset, load_dataset
from pellucid.errors import InvalidInputError
from pellucid.models.checkpoint import save_model
from pellucid.models.inference import predict_logits
from pellucid.models.registry import create_model
from pellucid.nn.distance import LpDistance
from pellucid.train.checkpointing import check_loss, check_run_dir, save_epoch, start_or_resume
from pellucid.train.recipes import register_recipe
from pellucid._config import CheckedConfig, config_option as _opt


@dataclass
class MetricMLPConfig(CheckedConfig):
    """Table 1 protocol of Metric as Transform (Fashion-MNIST)."""

    metric: str = _opt("l2", "l<p> (l0.5, l1, l2, l20, ...), stereo, cosine, linear, convex, "
                                    "invex or ordinary")
    hidden: int = _opt(100, "H, metric neurons", min=1)
    variant: str = _opt("standardised", "lp only: standardised (paper) or simple",
                        choices=("standardised", "simple"))
    dataset: str = _opt("fashion-mnist", "dataset name (see pellucid.data)")
    epochs: int = _opt(50, "passes over the training split", min=1)
    batch_size: int = _opt(50, "images per optimizer step", min=1)
    lr: float = _opt(1e-4, "Adam, cosine-annealed to 0 over all steps", above=0)
    seed: int = _opt(0, "seed of initialisation, data order and sampling", min=0, max=2**63 - 1)
    test_limit: int = _opt(0, "> 0: measure the per-epoch test accuracy on the first N test images", min=0)
    compiled_kernels: bool = _opt(False, "lp with p != 2: torch.compile'd distance loops (needs a C++ "
                                         "compiler; ~5x faster at p = 0.5, H = 500); may change on resume")


# Settings that choose how the same math is computed, not what is computed: a resumed run may change them.
EXECUTION_OPTIONS = ("compiled_kernels",)


@dataclass
class DictionaryMLPConfig(CheckedConfig):
    """Epsilon-softmax dictionary MLP of the rejection experiments (Fashion-MNIST)."""

    hidden: int = _opt(100, "H, keys", min=1)
    dataset: str = _opt("fashion-mnist", "dataset name (see pellucid.data)")
    epochs: int = _opt(30, "passes over the training split", min=1)
    batch_size: int = _opt(50, "images per optimizer step", min=1)
    lr: float = _opt(0.01, "Adam, constant", above=0)
    centre_lr_scale: float = _opt(1.0, "keys learn at lr * this (paper: 1 or 0.01)", min=0)
    data_init: bool = _opt(False, "keys = random training images, values = one-hot labels")
    epsilon_mode: str = _opt("running", "running, learned or fixed", choices=("running", "learned", "fixed"))
    seed: int = _opt(0, "seed of initialisation, data order and sampling", min=0, max=2**63 - 1)
    test_limit: int = _opt(0, "> 0: measure the per-epoch test accuracy on the first N test images", min=0)


def train_classifier(model: nn.Module, train: ImageDataset, test: ImageDataset, *, epochs: int,
                     batch_size: int, param_groups: list[dict], cosine: bool, seed: int,
                     out: Path | str | None, model_name: str, model_kwargs: dict[str, Any],
                     extra_config: dict[str, Any], progress: bool = False, resume: bool = False,
                     run_config: Any = None) -> list[dict[str, Any]]:
    """Adam + cross-entropy, optional per-step cosine decay; test accuracy after every epoch.

    With ``out``, saves a loadable model directory and the resumable training state after every
    epoch; ``run_config`` (the recipe's settings dataclass) is then required and ``resume=True``
    continues the run in ``out`` from its last finished epoch. The cosine schedule spans all
    epochs, so a resumed cosine run must keep its number of epochs.
    """
    if epochs < 1 or batch_size < 1:
        raise InvalidInputError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    if out is not None and run_config is None:
        raise InvalidInputError("train_classifier: saving to out needs run_config (the settings to resume with)")
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(param_groups)
    n = len(train)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, (lambda s: 0.5 * (1 + math.cos(math.pi * s / total_steps))) if cosine else (lambda s: 1.0))
    start, history = 0, []
    with contextlib.ExitStack() as stack:
        if out is not None:
            out = Path(out)
            check_run_dir(out, resume)  # before the lock creates the directory
            stack.enter_context(RunLock(out))
            start, history = start_or_resume(out, resume, run_config, model, optimizer, gen,
                                             may_change=EXECUTION_OPTIONS + (() if cosine else ("epochs",)))
            schedule.last_epoch = start * steps_per_epoch  # the optimizer's saved lr is already that step's
            if start:  # a kill after the state's commit may have left the model files one epoch behind
                save_model(model, out, model_name, model_kwargs, {**extra_config, "history_last": history[-1]})
        best = max((r["best_test_accuracy"] for r in history), default=0.0)
        for epoch in range(start + 1, epochs + 1):
            model.train()
            t0 = time.perf_counter()
            perm = torch.randperm(n, generator=gen)
            total_loss = 0.0
            for b in range(steps_per_epoch):
                rows = perm[b * batch_size:(b + 1) * batch_size]
                loss = F.cross_entropy(model(train.images[rows]), train.labels[rows])
                check_loss(loss, epoch, b + 1, out)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total_loss += loss.item() * len(rows)
            test_acc = float((predict_logits(model, test.images).argmax(1) == test.labels).float().mean())
            best = max(best, test_acc)
            row = {"epoch": epoch, "train_loss": total_loss / n, "test_accuracy": test_acc,
                   "best_test_accuracy": best, "epoch_seconds": round(time.perf_counter() - t0, 3)}
            history.append(row)
            if out is not None:
                save_epoch(out, model, optimizer, gen, run_config, history)  # the commit point of the epoch
                save_model(model, out, model_name, model_kwargs, {**extra_config, "history_last": row})
            if progress:
                print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                      file=sys.stderr, flush=True)
    return history


def _data(dataset: str, data_dir: str | None, test_limit: int):
    train, test = load_dataset(dataset, "train", data_dir=data_dir), load_dataset(dataset, "test", data_dir=data_dir)
    if tuple(train.images.shape[1:]) != (1, 28, 28):
        raise InvalidInputError(f"metric MLPs take 28x28 grey images; {dataset} has {tuple(train.images.shape[1:])}")
    if test_limit > 0:
        test = test.subset(slice(0, test_limit))
    data = {"dataset": dataset, "classes": None, "class_names": list(train.classes),
            "n_train": len(train), "n_test": len(test)}
    return train, test, data


@register_recipe("metric-mlp", MetricMLPConfig, "metric-neuron MLP, Metric as Transform Table 1 protocol")
def train_metric_mlp(cfg: MetricMLPConfig, out, *, resume: bool = False, progress: bool = True,
                     data_dir: str | None = None) -> dict[str, Any]:
    train, test, data = _data(cfg.dataset, data_dir, cfg.test_limit)
    torch.manual_seed(cfg.seed)
    kwargs = {"metric": cfg.metric, "hidden": cfg.hidden, "variant": cfg.variant}
    model = create_model("metric-mlp", **kwargs)
    for m in model.modules():
        if isinstance(m, LpDistance):
            m.compiled = cfg.compiled_kernels
    history = train_classifier(model, train, test, epochs=cfg.epochs, batch_size=cfg.batch_size,
                               param_groups=[{"params": model.parameters(), "lr": cfg.lr}], cosine=True,
                               seed=cfg.seed, out=out, model_name="metric-mlp", model_kwargs=kwargs,
                               extra_config={"data": data, "train": asdict(cfg)}, progress=progress,
                               resume=resume, run_config=cfg)
    return {"model": "metric-mlp", "out": str(out), "epochs": history, "config": asdict(cfg)}


def build_dictionary_mlp(cfg: DictionaryMLPConfig, train: ImageDataset):
    """The model (data-initialised if asked) and its parameter groups (keys at ``lr * scale``)."""
    torch.manual_seed(cfg.seed)
    kwargs = {"hidden": cfg.hidden, "epsilon_mode": cfg.epsilon_mode,
              "epsilon": 1.0 if cfg.epsilon_mode != "running" else None}
    model = create_model("dictionary-mlp", **kwargs)
    if cfg.data_init:
        rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.hidden]
        model.init_from_data_(train.images[rows], train.labels[rows])
    keys = [model.keys]
    rest = [p for p in model.parameters() if p is not model.keys]
    groups = [{"params": keys, "lr": cfg.lr * cfg.centre_lr_scale}, {"params": rest, "lr": cfg.lr}]
    return model, kwargs, groups


@register_recipe("dictionary-mlp", DictionaryMLPConfig, "epsilon-softmax dictionary MLP that can reject inputs")
def train_dictionary_mlp(cfg: DictionaryMLPConfig, out, *, resume: bool = False, progress: bool = True,
                         data_dir: str | None = None) -> dict[str, Any]:
    train, test, data = _data(cfg.dataset, data_dir, cfg.test_limit)
    model, kwargs, groups = build_dictionary_mlp(cfg, train)
    history = train_classifier(model, train, test, epochs=cfg.epochs, batch_size=cfg.batch_size,
                               param_groups=groups, cosine=False, seed=cfg.seed, out=out,
                               model_name="dictionary-mlp", model_kwargs=kwargs,
                               extra_config={"data": data, "train": asdict(cfg)}, progress=progress,
                               resume=resume, run_config=cfg)
    return {"model": "dictionary-mlp", "out": str(out), "epochs": history, "config": asdict(cfg)}
