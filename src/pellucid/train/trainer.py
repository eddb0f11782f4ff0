"""The classifier trainer shared by every recipe: seeded, resumable, with per-epoch validation."""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pellucid._device import draw_device
from pellucid._io import RunLock
from pellucid._signals import signal_name, signals_recorded
from pellucid._text import duration
from pellucid.data.datasets import ImageDataset
from pellucid.distributed import Job
from pellucid.errors import CheckpointError, InvalidInputError, Stopped
from pellucid.models.checkpoint import save_model
from pellucid.models.inference import predict_logits
from pellucid.nn.semantic.base import project_constraints_
from pellucid.robust.attacks import pgd
from pellucid.robust.evaluate import advance_generator
from pellucid.train.checkpointing import (PartialEpoch, check_loss, check_run_dir, save_epoch,
                                          save_partial_epoch, start_or_resume)
from pellucid.train.config import TrainConfig  # torch-free, so that --help needs no torch
from pellucid.train.optim import SGD, Adam


# Without a terminal (no progress bar), the pace is said once, this long into the first epoch.
FIRST_PACE_SECONDS = 60.0

# The job every fit() in the context trains in (see training_job); unset: one process on the CPU.
_JOB: contextvars.ContextVar[Job | None] = contextvars.ContextVar("pellucid_training_job", default=None)


@contextlib.contextmanager
def training_job(job: Job) -> Iterator[Job]:
    """Every :func:`fit` inside the context trains on ``job.device`` and, for a job of several
    processes (``torchrun``), data-parallel over them. A context rather than an argument, so that
    every recipe trains where ``pellucid train --device`` says without passing the job through
    its own code; the previous job is restored on exit."""
    token = _JOB.set(job)
    try:
        yield job
    finally:
        _JOB.reset(token)


def current_job() -> Job:
    """The job :func:`fit` trains in: :func:`training_job`'s, else one process on the CPU."""
    return _JOB.get() or Job()


def lr_factor(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate's multiplier at optimizer step ``step`` (0-based) of ``total_steps``:
    1 (``constant``) or ``(1 + cos(pi step / total_steps)) / 2`` (``cosine``, annealed per step)."""
    if cfg.schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * step / total_steps))


def resumable_changes(cfg: TrainConfig) -> tuple[str, ...]:
    """Settings a resumed run may change: the execution options, and ``epochs`` unless a cosine
    schedule spans them."""
    return cfg.EXECUTION_OPTIONS + (("epochs",) if cfg.schedule == "constant" else ())


def adversarial_eps(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The adversarial-training radius at optimizer step ``step`` (1-based):
    ``adv_eps * min(1, step / (adv_warmup_epochs * steps_per_epoch))``.

    Why a ramp: PGD training at the full radius from a random init can collapse to a constant
    classifier (seen here: LeNet at eps 0.3 stays at 52.9 % train accuracy for 15 epochs); growing
    eps from 0 lets it learn the clean task first (as in Gowal et al. 2018).
    """
    warmup = cfg.adv_warmup_epochs * steps_per_epoch
    return cfg.adv_eps if warmup <= 0 else cfg.adv_eps * min(1.0, step / warmup)


def crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """The CIFAR augmentation, per image: zero-pad by ``pad`` pixels, crop a random window of the
    original size, and flip it left-right with probability 1/2. Vectorised: one gather for the
    batch. Draws ``2 B`` offsets, then ``B`` flips, from ``generator``."""
    b, _, h, w = x.shape
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator, device=draw_device(generator))
    flips = torch.rand(b, generator=generator, device=draw_device(generator), dtype=torch.float32) < 0.5
    padded = F.pad(x, (pad, pad, pad, pad))
    cols = offsets[:, 1:] + torch.arange(w)  # (B, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)  # a flip reads the window right to left
    rows = offsets[:, :1] + torch.arange(h)  # (B, H)
    batch = torch.arange(b)[:, None, None]
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (B, C, H, W)


def split_train_val(ds: ImageDataset, val_size: int, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """A seeded random split: the same ``seed`` always holds out the same images."""
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed), device="cpu")
    return ds.subset(perm[val_size:].sort().values), ds.subset(perm[:val_size].sort().values)


def _validate(model: nn.Module, val: ImageDataset, cfg: TrainConfig, epoch: int,
              device: torch.device) -> dict[str, float]:
    if len(val) == 0:
        return {}
    x, y = val.images.to(device), val.labels.to(device)
    clean = predict_logits(model, x).argmax(1) == y
    out = {"val_accuracy": float(clean.float().mean())}
    if cfg.val_pgd_steps > 0:
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        x_adv = pgd(model, x, y, eps=cfg.val_eps, step_size=cfg.val_step,
                    steps=cfg.val_pgd_steps, generator=gen)
        adv = predict_logits(model, x_adv).argmax(1) == y
        out["val_pgd_accuracy"] = float((clean & adv).float().mean())
    return out


def best_so_far(history: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """``{"best_<key>": max over the rows, "best_epoch": the first epoch that reached it}``."""
    rows = [r for r in history if isinstance(r.get(key), (int, float))]
    if not rows:
        return {}
    best = max(rows, key=lambda r: r[key])  # the first of equal maxima
    return {f"best_{key}": best[key], "best_epoch": best["epoch"]}


def fit(model: nn.Module, train: ImageDataset, val: ImageDataset, cfg: TrainConfig, out: Path | str,
        *, model_name: str, model_kwargs: dict[str, Any] | None = None,
        extra_config: dict[str, Any] | None = None, resume: bool = False,
        progress: bool = True,
        on_epoch: Callable[[nn.Module, dict[str, Any]], None] | None = None,
        param_groups: Sequence[dict[str, Any]] | None = None,
        evaluate: Callable[[nn.Module], dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """Train ``model`` with Adam (or SGD, ``cfg.optimizer``) and cross-entropy; checkpoint and log
    after every epoch.

    Writes to ``out``: ``model.safetensors`` + ``config.json`` (a loadable model directory),
    ``train_state.safetensors`` (everything needed to resume) and ``metrics.jsonl`` (one line per
    epoch). ``resume=True`` continues from the last finished epoch, bit-for-bit as if
    uninterrupted. Returns the metrics of all epochs. ``on_epoch(model, row)``, when given, is
    called after each epoch has been saved (e.g. a
    :class:`~pellucid.explain.paths.PathStabilityTracker`); it must leave the model as it found it.

    Optional, for recipes with other protocols (each is off by default):

    * ``param_groups``: the optimizer's parameter groups, torch style (``[{"params": [...], "lr": ...}]``);
      a setting missing from a group is ``cfg``'s. ``cfg.schedule`` scales every group's own
      learning rate (:func:`lr_factor`).
    * ``evaluate(model) -> {name: value}``: measured after each epoch's validation (e.g. the test
      accuracy) and added to its row; the first name is the selection metric, higher is better:
      the row also gets ``best_<name>`` and ``best_epoch`` over the epochs so far.

    Where it trains is the :func:`training_job`'s: ``model`` is moved to its device (batches go
    there one at a time; random draws stay on the CPU's generator, so every device sees the same
    order, noise and random starts). In a job of ``W`` processes each optimizer step takes the
    same batch of ``batch_size`` images on every process, each process computes the gradient of
    its contiguous ``1/W`` of it, and the gradients are summed, so a step is one of a single
    process's up to the order of float additions (BatchNorm statistics are the share's own).
    Process 0 validates, calls ``on_epoch`` and ``evaluate``, writes the run directory and
    returns the metrics; the other processes write nothing and return ``[]``.

    In one process on the main thread, a Ctrl-C (SIGINT) or SIGTERM stops training at the end of
    the batch: the state after it is saved as a partial-epoch state (in an epoch's last batch, the
    epoch is validated and committed instead), and :class:`~pellucid.errors.Stopped` (a
    ``KeyboardInterrupt`` whose text says what was kept) is raised; ``resume=True`` continues bit
    for bit (:meth:`~pellucid.errors.Stopped.continued_by` adds how a command's user says so).
    A signal in the last epoch's last batch lets the run finish, then raises ``Stopped`` with
    ``finished=True``, so that a caller with more work to do stops too. A second signal raises at
    once.
    """
    out = Path(out)
    job = current_job()
    check_run_dir(out, resume)  # before the lock creates the directory
    job.barrier()  # every process has checked before process 0 writes
    # One process answers Ctrl-C / SIGTERM at the end of the batch, with the epoch so far saved.
    # (Under torchrun the processes would stop at different batches: there a signal acts at once.)
    stops = (signals_recorded(signal.SIGINT, signal.SIGTERM, escalate=True, notice=_say_stopping)
             if job.world_size == 1 else contextlib.nullcontext([]))
    with RunLock(out) if job.is_main else contextlib.nullcontext(), stops as stop:
        history = _fit_locked(model, train, val, cfg, out, model_name=model_name,
                              model_kwargs=model_kwargs, extra_config=extra_config, resume=resume,
                              progress=progress, on_epoch=on_epoch, param_groups=param_groups,
                              evaluate=evaluate, job=job, stop=stop)
        if stop:  # asked in the last epoch's last batch or after: not swallowed, the caller stops
            raise Stopped(stop[0], f"training finished: all {cfg.epochs} epochs are saved in {out}",
                          finished=True)
        return history


def _say_stopping(signum: int) -> None:
    # os.write: called from a signal handler, which may interrupt a print to stderr (reentrant
    # calls into a buffered stream raise); on a terminal, below the progress bar's line
    os.write(2, f"{chr(10) if os.isatty(2) else ''}pellucid: {signal_name(signum)}: stopping at the end "
                "of this batch, with the work so far saved (Ctrl-C again stops at once and loses what "
                "is not saved)\n".encode())


def _epoch_row(epoch: int, history: list[dict[str, Any]], model: nn.Module, val: ImageDataset,
               cfg: TrainConfig, evaluate: Callable[[nn.Module], dict[str, float]] | None,
               row: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The epoch's metrics: training figures, validation, then ``evaluate``'s and its best so far."""
    row.update(_validate(model, val, cfg, epoch, device))
    if evaluate is not None:
        measured = evaluate(model)
        row.update(measured)
        if measured:
            row.update(best_so_far([*history, row], next(iter(measured))))
    return row


def _fit_locked(model: nn.Module, train: ImageDataset, val: ImageDataset, cfg: TrainConfig, out: Path,
                *, model_name: str, model_kwargs: dict[str, Any] | None,
                extra_config: dict[str, Any] | None, resume: bool, progress: bool,
                on_epoch: Callable[[nn.Module, dict[str, Any]], None] | None = None,
                param_groups: Sequence[dict[str, Any]] | None = None,
                evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
                job: Job | None = None, stop: Sequence[int] = ()) -> list[dict[str, Any]]:
    if len(train) == 0:
        raise InvalidInputError("no training images (is --val-size as large as the train split?)")
    job = job or Job()
    model.to(job.device)  # in place: the parameters, and so param_groups, stay the same objects
    gen = torch.Generator().manual_seed(cfg.seed)
    # torch.optim's arithmetic without its torch._dynamo import (0.8-1.0 s, see train/optim.py)
    params = model.parameters() if param_groups is None else param_groups
    optimizer = (SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
                 if cfg.optimizer == "sgd" else Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay))
    base_lrs = [group["lr"] for group in optimizer.param_groups]  # before a resume loads the last lr
    start, history, partial = start_or_resume(out, resume, cfg, model, optimizer, gen,
                                              may_change=resumable_changes(cfg), write=job.is_main)
    job.broadcast_(list(model.state_dict().values()))  # the same start everywhere, by construction
    config = {**(extra_config or {}), "train": asdict(cfg)}
    # a kill after the state's commit may have left the model files one epoch behind (a partial
    # state's weights are mid-epoch: the model files keep the last finished epoch's)
    if start and partial is None and job.is_main:
        save_model(model, out, model_name, model_kwargs, config)
    n, bs = len(train), cfg.batch_size
    n_batches = math.ceil(n / bs)
    if partial is not None and (partial.epoch != start + 1 or not 0 < partial.batches < n_batches):
        raise CheckpointError(f"cannot resume {out}: its partial-epoch state stops after batch "
                              f"{partial.batches} of epoch {partial.epoch}, which this training split "
                              f"({n_batches} batches per epoch) does not have")
    show = progress and job.is_main
    if show and start >= cfg.epochs:
        tqdm.write(f"{out} has finished its {cfg.epochs} epochs: nothing left to train", file=sys.stderr)
    save_every = cfg.checkpoint_minutes * 60
    # without a terminal there is no bar: one early line says the pace, instead of nothing until
    # the first epoch ends (20 minutes and more for the large metric cells)
    pace_said = not show or sys.stderr.isatty()
    for epoch in range(start + 1, cfg.epochs + 1):
        model.train()
        t0 = last_save = time.perf_counter()
        if partial is None:
            epoch_start, first, total_loss, total_correct, done_seconds = gen.get_state(), 0, 0.0, 0, 0.0
            perm = torch.randperm(n, generator=gen, device=draw_device(gen))
        else:  # the interrupted epoch's data order, drawn again; then the generator as it was
            epoch_start, first = partial.epoch_start, partial.batches
            total_loss, total_correct, done_seconds = partial.loss_sum, partial.correct, partial.train_seconds
            perm = torch.randperm(n, generator=torch.Generator().set_state(epoch_start), device="cpu")
            if show:
                tqdm.write(f"resuming epoch {epoch} after batch {first} of {n_batches}", file=sys.stderr)
            partial = None
        bar = tqdm(range(first, n_batches), desc=f"epoch {epoch}/{cfg.epochs}", leave=False,
                   initial=first, total=n_batches,
                   disable=None if show else True, file=sys.stderr, unit="batch")  # None: no TTY, no bar
        for b in bar:
            rows = perm[b * bs:(b + 1) * bs]
            x, y = train.images[rows], train.labels[rows]
            on = dict(generator=gen, device=draw_device(gen), dtype=torch.float32)  # as on every host
            if cfg.augment == "noise" and torch.rand((), **on) < cfg.noise_p:
                noise = torch.randn(x.shape, **on) * cfg.noise_std + cfg.noise_mean
                x = (x + noise).clamp(0.0, 1.0)
            elif cfg.augment == "crop-flip":
                x = crop_flip(x, gen)
            step = (epoch - 1) * n_batches + b + 1
            if job.world_size == 1:
                loss, correct = _single_step(model, optimizer, x.to(job.device), y.to(job.device),
                                             cfg, gen, step, n_batches, epoch, b, out)
            else:
                loss, correct = _shared_step(model, optimizer, x, y, cfg, gen, step, n_batches,
                                             epoch, b, out, job)
            if cfg.schedule != "constant":
                factor = lr_factor(cfg, step - 1, cfg.epochs * n_batches)
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base * factor
            optimizer.step()
            project_constraints_(model)
            total_loss += loss * len(y)
            total_correct += correct
            bar.set_postfix(loss=f"{loss:.4f}")
            if not pace_said and b + 1 < n_batches and time.perf_counter() - t0 >= FIRST_PACE_SECONDS:
                per_batch = (time.perf_counter() - t0) / (b + 1 - first)
                tqdm.write(f"epoch {epoch} of {cfg.epochs}: {b + 1} of {n_batches} batches; training takes "
                           f"about {duration(per_batch * n_batches, ' ')} per epoch at this pace "
                           f"({duration(per_batch * (n_batches - b - 1), ' ')} left in this one)",
                           file=sys.stderr)
                pace_said = True
            if b + 1 < n_batches and (stop or save_every > 0 and time.perf_counter() - last_save >= save_every):
                if job.is_main:  # the others' state is the same: process 0's file resumes them all
                    save_partial_epoch(out, model, optimizer, gen, cfg, history, PartialEpoch(
                        epoch, b + 1, total_loss, total_correct,
                        done_seconds + time.perf_counter() - t0, epoch_start))
                last_save = time.perf_counter()
                if stop:
                    bar.close()
                    raise Stopped(stop[0], f"epoch {epoch} of {cfg.epochs} stopped after batch {b + 1} "
                                           f"of {n_batches}; the run so far is saved in {out}")
        train_seconds = done_seconds + time.perf_counter() - t0
        if not job.is_main:  # process 0 validates and writes; the others go on to the next epoch
            continue
        row = _epoch_row(epoch, history, model, val, cfg, evaluate,
                         {"epoch": epoch, "train_loss": total_loss / n,
                          "train_accuracy": total_correct / n, "train_seconds": round(train_seconds, 3)},
                         job.device)
        row["epoch_seconds"] = round(done_seconds + time.perf_counter() - t0, 3)
        history.append(row)
        save_epoch(out, model, optimizer, gen, cfg, history)  # the commit point of the epoch
        save_model(model, out, model_name, model_kwargs, config)
        if progress:
            msg = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
            if epoch < cfg.epochs:  # long runs (hours of epochs): when to come back
                left = (cfg.epochs - epoch) * row["epoch_seconds"]
                msg += (f" (epoch {epoch} of {cfg.epochs}; about {duration(left, ' ')} left at this "
                        "epoch's pace)")
            tqdm.write(msg, file=sys.stderr)
        if on_epoch is not None:
            on_epoch(model, dict(row))
        if stop and epoch < cfg.epochs:  # asked during the epoch's last batch or its validation
            raise Stopped(stop[0], f"stopped after epoch {epoch} of {cfg.epochs}; the run so far is "
                                   f"saved in {out}")
    job.barrier()  # the others return once process 0 has written the last epoch (they may read it)
    return history if job.is_main else []


def _adversarial(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                 generator: torch.Generator, step: int, n_batches: int) -> torch.Tensor:
    eps = adversarial_eps(cfg, step, n_batches)
    x = pgd(model, x, y, eps=eps, steps=cfg.adv_steps, step_size=2.5 * eps / cfg.adv_steps,
            generator=generator)
    model.train()
    return x


def _single_step(model: nn.Module, optimizer: Adam, x: torch.Tensor, y: torch.Tensor,
                 cfg: TrainConfig, gen: torch.Generator, step: int, n_batches: int, epoch: int,
                 b: int, out: Path) -> tuple[float, int]:
    """One process: the batch's gradient in ``.grad``; returns (mean loss, correct)."""
    if cfg.adv_eps > 0:
        x = _adversarial(model, x, y, cfg, gen, step, n_batches)
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    check_loss(loss, epoch, b + 1, out)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return loss.item(), int((logits.argmax(1) == y).sum())


def _shared_step(model: nn.Module, optimizer: Adam, x: torch.Tensor, y: torch.Tensor,
                 cfg: TrainConfig, gen: torch.Generator, step: int, n_batches: int, epoch: int,
                 b: int, out: Path, job: Job) -> tuple[float, int]:
    """Process ``job.rank`` of several: the gradient of its contiguous share of the batch, summed
    over the processes into the whole batch's mean-loss gradient; returns the batch's (mean loss,
    correct), the same on every process."""
    per = math.ceil(len(y) / job.world_size)
    lo, hi = min(job.rank * per, len(y)), min((job.rank + 1) * per, len(y))
    xs, ys = x[lo:hi].to(job.device), y[lo:hi].to(job.device)
    if cfg.adv_eps > 0:
        # the share's random starts: the slice of the batch's draws these rows get in one
        # process; every process then moves the shared generator past the whole batch's draws
        mine = torch.Generator()
        mine.set_state(gen.get_state())
        advance_generator(mine, lo * x[0].numel(), x.dtype)
        if hi > lo:
            xs = _adversarial(model, xs, ys, cfg, mine, step, n_batches)
        advance_generator(gen, x.numel(), x.dtype)
    optimizer.zero_grad(set_to_none=True)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    loss_sum = torch.zeros((), device=job.device)
    correct = torch.zeros((), device=job.device)
    if hi > lo:
        logits = model(xs)
        loss_sum = F.cross_entropy(logits, ys, reduction="sum")
        (loss_sum / len(y)).backward()  # summed over the shares: the batch's mean loss
        correct = (logits.argmax(1) == ys).sum()
    # one exchange: the gradients, which exist (a parameter no share used keeps None), loss, correct
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    has = torch.tensor([float(p.grad is not None) for p in params], dtype=grads[0].dtype,
                       device=job.device)
    totals = torch.stack([loss_sum.detach(), correct.to(loss_sum.dtype)]).to(grads[0].dtype)
    job.all_reduce_sum_([*grads, has, totals])
    for p, g, used in zip(params, grads, has.tolist()):
        p.grad = g if used > 0 else None
    loss = totals[0] / len(y)
    check_loss(loss, epoch, b + 1, out)  # the same value, and so the same error, everywhere
    return float(loss), int(round(float(totals[1])))
