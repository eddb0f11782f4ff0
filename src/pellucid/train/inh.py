r"""``pellucid train inh-mnist``: a 1-layer Incremental Neural Hashing classifier on MNIST pixels.

Three stages (:func:`fit_inh_classifier`):

1. greedy fit (:func:`pellucid.nn.disjunctive.hashing.fit_inh`): passes over the 60,000 training images in
   batches; per batch, each slot's threshold becomes the lowest with 100 % precision on the batch
   (``t_s = max_{y_i != c_s} m_s(x_i) + eps``; by default each batch's own, ``threshold_mode=
   "batch"``, so small batches give permissive thresholds and few slots), the inputs no slot of
   their class fires for are candidates, and the greedy set cover of the candidates by each other
   (candidate ``i`` covers ``j`` iff same class and ``m(x_i, x_j) > t_i``) becomes new slots;
2. pruning (:func:`pellucid.nn.disjunctive.hashing.prune_inh`) to a greedy set cover of the training set;
3. a gradient stage (:func:`pellucid.nn.disjunctive.hashing.tune_inh`) on keys and thresholds: cross-entropy of
   the soft OR of each class's slots (``tune_epochs=0`` skips it).

Prediction: ``argmax_k max_{s: c_s = k} (m_s(x) - t_s)``. ``threshold_mode="max"`` with
``batch_size=2000`` and ``tune_epochs=0`` is the pure precision-1 fit (every training image
classified correctly, about 6,000 slots).

The run directory holds ``model.safetensors`` + ``config.json`` (model ``inh-mnist`` with
``kwargs.n_slots``, data ``{"dataset": "mnist", "classes": null}``, so ``pellucid evaluate DIR``
rebuilds it and finds its test set) and ``metrics.jsonl`` (one row per fit pass and per tuning
epoch; the last also holds the slot counts, ``train_accuracy``, ``test_accuracy`` and
``fit_seconds``). All takes under a minute and keeps no training state: there is nothing to
resume.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

import pellucid.models.inh  # noqa: F401  (registers inh-mnist)
from pellucid._io import RunLock, save_bytes_atomic
from pellucid.data.datasets import load_dataset
from pellucid.errors import InvalidInputError
from pellucid.models.checkpoint import save_model
from pellucid.models.inference import predict_logits
from pellucid.models.registry import create_model
from pellucid.nn.disjunctive.hashing import IncrementalNeuralHashing, fit_inh, prune_inh, tune_inh
from pellucid.train.checkpointing import METRICS_FILE, check_run_dir
from pellucid.train.config import InhMnistConfig  # torch-free: pellucid train inh-mnist --help
from pellucid.train.trainer import current_job

MODEL = "inh-mnist"


def _accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predict_logits(model, images, batch_size=4096).argmax(1) == labels).float().mean())


def fit_inh_classifier(model: IncrementalNeuralHashing, images: torch.Tensor, labels: torch.Tensor,
                       cfg: InhMnistConfig, say: Callable[[dict[str, Any]], None] | None = None
                       ) -> list[dict[str, Any]]:
    """The recipe's three stages on ``model``: greedy fit, pruning, gradient stage; returns the
    metrics rows (numbered ``epoch``; one per fit pass, ``stage: "fit"`` and its ``pass``, then one
    per tuning epoch, ``stage: "tune"`` and its ``tune_epoch``); the last
    row also holds ``fitted_slots``, ``slots``, ``pruned_slots`` and ``fit_seconds``."""
    t0 = time.perf_counter()
    rows = [{"stage": "fit", **r} for r in fit_inh(
        model, images, labels, batch_size=cfg.batch_size, max_passes=cfg.max_passes, eps=cfg.eps,
        threshold_mode=cfg.threshold_mode, generator=torch.Generator().manual_seed(cfg.seed),
        on_pass=say)]
    fitted = model.n_slots
    if cfg.prune:
        prune_inh(model, images, labels)
    if cfg.tune_epochs:
        rows += [{"stage": "tune", "tune_epoch": r.pop("epoch"), **r} for r in tune_inh(
            model, images, labels, epochs=cfg.tune_epochs, lr=cfg.tune_lr,
            temperature=cfg.tune_temperature, batch_size=cfg.tune_batch_size,
            generator=torch.Generator().manual_seed(cfg.seed + 1), on_epoch=say)]
    history = [{"epoch": i, **r} for i, r in enumerate(rows, 1)]  # the metrics file's row counter
    history[-1].update({"fitted_slots": fitted, "slots": model.n_slots,
                        "pruned_slots": fitted - model.n_slots,
                        "fit_seconds": round(time.perf_counter() - t0, 3)})
    return history


def train_inh_mnist(cfg: InhMnistConfig, out: Path | str, *, resume: bool = False,
                    progress: bool = True, data_dir: str | None = None) -> dict[str, Any]:
    """Fit, prune, tune, measure and save the model directory ``out``; returns the recipe summary
    (``epochs``: the metrics rows)."""
    if resume:
        raise InvalidInputError(f"{MODEL} keeps no training state to resume (its fit takes under a "
                                "minute); drop --resume and train into a new --out")
    job = current_job()
    if job.world_size > 1:
        raise InvalidInputError(f"{MODEL} fits in one process (its greedy set cover is not "
                                "data-parallel); run it without torchrun")
    if job.device.type != "cpu":  # --device auto on a GPU host must not fail: say so and go on
        print(f"pellucid: {MODEL} fits on the CPU; device {job.device} is not used", file=sys.stderr)
    out = Path(out)
    check_run_dir(out, resume=False)  # before the lock creates the directory
    with RunLock(out):
        check_run_dir(out, resume=False)  # another process may have written it in between
        train = load_dataset("mnist", "train", data_dir=data_dir)
        test = load_dataset("mnist", "test", data_dir=data_dir)
        model = create_model(MODEL, similarity=cfg.similarity)
        say = (lambda row: print(" ".join(f"{k}={v}" for k, v in row.items()), file=sys.stderr,
                                 flush=True)) if progress else None
        history = fit_inh_classifier(model, train.images, train.labels, cfg, say)
        history[-1].update({"train_accuracy": _accuracy(model, train.images, train.labels),
                            "test_accuracy": _accuracy(model, test.images, test.labels)})
        if say is not None:
            say(history[-1])
        data = {"dataset": "mnist", "classes": None, "class_names": list(train.classes),
                "n_train": len(train), "n_test": len(test)}
        save_bytes_atomic(out / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in history).encode())
        save_model(model, out, MODEL, {"n_slots": model.n_slots, "similarity": cfg.similarity},
                   {"data": data, "train": asdict(cfg), "history_last": history[-1]})
    return {"model": MODEL, "out": str(out), "epochs": history, "config": asdict(cfg)}
