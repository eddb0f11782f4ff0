"""The classifier trainer shared by every recipe: seeded, resumable, with per-epoch validation."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pellucid._io import save_bytes_atomic
from pellucid.data.datasets import ImageDataset
from pellucid.errors import CheckpointError
from pellucid.models.checkpoint import save_model
from pellucid.nn.semantic import project_constraints_
from pellucid.robust.attacks import pgd
from pellucid.robust.evaluate import predict_logits
from pellucid.train.checkpointing import STATE_FILE, load_train_state, save_train_state

METRICS_FILE = "metrics.jsonl"


def config_option(default, help: str):
    """A config field whose ``help`` becomes its command-line option's help text."""
    return field(default=default, metadata={"help": help})


_opt = config_option


@dataclass
class TrainConfig:
    """Optimisation and validation settings (defaults: the white-box paper's)."""

    epochs: int = _opt(15, "passes over the training split")
    batch_size: int = _opt(200, "images per optimizer step")
    lr: float = _opt(3e-3, "Adam learning rate (L2 weight decay in the gradient, not AdamW)")
    weight_decay: float = _opt(3e-6, "L2 weight decay")
    noise_p: float = _opt(0.7, "per batch, with this probability: x <- clip(x + N(noise_mean, "
                               "noise_std^2), 0, 1)")
    noise_mean: float = _opt(0.05, "mean of the noise augmentation")
    noise_std: float = _opt(0.25, "standard deviation of the noise augmentation")
    adv_eps: float = _opt(0.0, "> 0: Madry-style PGD adversarial training at this L-inf eps")
    adv_steps: int = _opt(7, "PGD steps of adversarial training (step 2.5 eps / steps)")
    adv_warmup_epochs: float = _opt(0.0, "epochs over which the adversarial-training eps ramps "
                                         "linearly from 0 to adv_eps, step by step")
    val_size: int = _opt(1000, "images held out of the train split for per-epoch validation")
    val_pgd_steps: int = _opt(10, "PGD steps of the per-epoch robust validation (0: none)")
    val_eps: float = _opt(0.3, "L-inf eps of the validation PGD")
    val_step: float = _opt(0.1, "step size of the validation PGD")
    seed: int = _opt(314, "seed of initialisation, data order, augmentation and the split")


def adversarial_eps(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The adversarial-training radius at optimizer step ``step`` (1-based):
    ``adv_eps * min(1, step / (adv_warmup_epochs * steps_per_epoch))``.

    Why a ramp: PGD training at the full radius from a random init can collapse to a constant
    classifier (seen here: LeNet at eps 0.3 stays at 52.9 % train accuracy for 15 epochs); growing
    eps from 0 lets it learn the clean task first (as in Gowal et al. 2018).
    """
    warmup = cfg.adv_warmup_epochs * steps_per_epoch
    return cfg.adv_eps if warmup <= 0 else cfg.adv_eps * min(1.0, step / warmup)


def split_train_val(ds: ImageDataset, val_size: int, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """A seeded random split: the same ``seed`` always holds out the same images."""
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    return ds.subset(perm[val_size:].sort().values), ds.subset(perm[:val_size].sort().values)


def _validate(model: nn.Module, val: ImageDataset, cfg: TrainConfig, epoch: int) -> dict[str, float]:
    if len(val) == 0:
        return {}
    clean = predict_logits(model, val.images).argmax(1) == val.labels
    out = {"val_accuracy": float(clean.float().mean())}
    if cfg.val_pgd_steps > 0:
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        x_adv = pgd(model, val.images, val.labels, eps=cfg.val_eps, step_size=cfg.val_step,
                    steps=cfg.val_pgd_steps, generator=gen)
        adv = predict_logits(model, x_adv).argmax(1) == val.labels
        out["val_pgd_accuracy"] = float((clean & adv).float().mean())
    return out


def _read_metrics(path: Path, upto_epoch: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["epoch"] <= upto_epoch]


def fit(model: nn.Module, train: ImageDataset, val: ImageDataset, cfg: TrainConfig, out: Path | str,
        *, model_name: str, model_kwargs: dict[str, Any] | None = None,
        extra_config: dict[str, Any] | None = None, resume: bool = False,
        progress: bool = True) -> list[dict[str, Any]]:
    """Train ``model`` with Adam and cross-entropy; checkpoint and log after every epoch.

    Writes to ``out``: ``model.safetensors`` + ``config.json`` (a loadable model directory),
    ``train_state.safetensors`` (everything needed to resume) and ``metrics.jsonl`` (one line per
    epoch). ``resume=True`` continues from the last finished epoch, bit-for-bit as if
    uninterrupted. Returns the metrics of all epochs.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, history = 0, []
    state_path = out / STATE_FILE
    if resume:
        if not state_path.is_file():
            raise CheckpointError(f"nothing to resume in {out} (no {STATE_FILE}); drop --resume")
        info = load_train_state(state_path, model, optimizer, gen)
        # resuming may extend the number of epochs; every other setting must be the same
        # a setting added after the run started reads as its default
        defaults = {f.name: f.default for f in fields(cfg)}
        saved = {k: v for k, v in {**defaults, **(info.get("config") or {})}.items() if k != "epochs"}
        wanted = {k: v for k, v in asdict(cfg).items() if k != "epochs"}
        if saved != wanted:
            diff = sorted(k for k in wanted if saved.get(k) != wanted[k])
            raise CheckpointError(f"cannot resume {out}: it was started with different settings "
                                  f"({', '.join(f'{k}={saved.get(k)}' for k in diff)})")
        start = int(info["epoch"])
        history = _read_metrics(out / METRICS_FILE, start)
    elif state_path.exists():
        raise CheckpointError(f"{out} already holds a training run; use --resume or a new --out")
    config = {**(extra_config or {}), "train": asdict(cfg)}
    n, bs = len(train), cfg.batch_size
    n_batches = math.ceil(n / bs)
    for epoch in range(start + 1, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        total_loss, total_correct = 0.0, 0
        bar = tqdm(range(n_batches), desc=f"epoch {epoch}/{cfg.epochs}", leave=False,
                   disable=None if progress else True, file=sys.stderr, unit="batch")  # None: no TTY, no bar
        for b in bar:
            rows = perm[b * bs:(b + 1) * bs]
            x, y = train.images[rows], train.labels[rows]
            if torch.rand((), generator=gen) < cfg.noise_p:
                noise = torch.randn(x.shape, generator=gen) * cfg.noise_std + cfg.noise_mean
                x = (x + noise).clamp(0.0, 1.0)
            if cfg.adv_eps > 0:
                eps = adversarial_eps(cfg, (epoch - 1) * n_batches + b + 1, n_batches)
                x = pgd(model, x, y, eps=eps, steps=cfg.adv_steps,
                        step_size=2.5 * eps / cfg.adv_steps, generator=gen)
                model.train()
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            project_constraints_(model)
            total_loss += loss.item() * len(y)
            total_correct += int((logits.argmax(1) == y).sum())
            bar.set_postfix(loss=f"{loss.item():.4f}")
        train_seconds = time.perf_counter() - t0
        row = {"epoch": epoch, "train_loss": total_loss / n, "train_accuracy": total_correct / n,
               "train_seconds": round(train_seconds, 3)}
        row.update(_validate(model, val, cfg, epoch))
        row["epoch_seconds"] = round(time.perf_counter() - t0, 3)
        history.append(row)
        # checkpoint: the loadable model, then the resumable state (the authority on resume)
        save_model(model, out, model_name, model_kwargs, config)
        save_train_state(state_path, model, optimizer, gen, {"epoch": epoch, "config": asdict(cfg)})
        save_bytes_atomic(out / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in history).encode())
        if progress:
            msg = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
            tqdm.write(msg, file=sys.stderr)
    return history
